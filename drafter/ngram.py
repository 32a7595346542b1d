"""Model-free prompt-lookup drafter: propose what followed an earlier match of the context's tail.

The longest tail n-gram (max_ngram down to min_ngram tokens) that occurs earlier is looked up;
``match="latest"`` continues its most recent occurrence, ``"earliest"`` its first (as
transformers' prompt lookup does).

Its q is one-hot on each proposed token, which keeps verification exact: a token is accepted
with probability p(x), and on rejection the recovered token comes from p with x removed.
"""

from __future__ import annotations

import torch

from specgrove.proposal import Proposal
from specgrove.sampling import SamplingParams


class NgramDrafter:
    def __init__(self, vocab_size: int, max_ngram: int = 3, min_ngram: int = 1, match: str = "latest"):
        assert 1 <= min_ngram <= max_ngram, (min_ngram, max_ngram)
        assert match in ("latest", "earliest"), match
        self.name = "ngram"
        self.vocab_size = vocab_size
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.match = match

    def open(self) -> "NgramDraftSession":
        return NgramDraftSession(self)


class NgramDraftSession:
    def __init__(self, drafter: NgramDrafter):
        self.drafter = drafter

    def propose(
        self, context: list[int], max_tokens: int, params: SamplingParams, generator: torch.Generator,
        budget: object = None,
    ) -> Proposal:
        """The budget's stop rules never fire on a one-hot q (entropy 0, confidence 1)."""
        d = self.drafter
        tokens = lookup(context, max_tokens, d.max_ngram, d.min_ngram, earliest=d.match == "earliest")
        q = torch.zeros(len(tokens), self.drafter.vocab_size)
        q[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
        return Proposal(tokens, q)


def lookup(context: list[int], max_tokens: int, max_ngram: int, min_ngram: int, earliest: bool = False) -> list[int]:
    """The tokens after an earlier occurrence (the latest, or the earliest) of the longest
    matching tail n-gram; an occurrence must leave at least one token to propose."""
    if max_tokens <= 0:
        return []
    for n in range(min(max_ngram, len(context) - 1), min_ngram - 1, -1):
        tail = context[-n:]
        starts = range(len(context) - n - 1, -1, -1)
        for start in reversed(starts) if earliest else starts:
            if context[start : start + n] == tail:
                return context[start + n : start + n + max_tokens]
    return []
