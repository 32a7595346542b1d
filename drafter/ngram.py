"""Model-free prompt-lookup drafter: propose what followed the latest earlier match of the context's tail.

Its q is one-hot on each proposed token, which keeps verification exact: a token is accepted
with probability p(x), and on rejection the recovered token comes from p with x removed.
"""

from __future__ import annotations

import torch

from drafter.proposal import Proposal
from specgrove.sampling import SamplingParams


class NgramDrafter:
    def __init__(self, vocab_size: int, max_ngram: int = 3, min_ngram: int = 1):
        assert 1 <= min_ngram <= max_ngram, (min_ngram, max_ngram)
        self.name = "ngram"
        self.vocab_size = vocab_size
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

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
        tokens = lookup(context, max_tokens, self.drafter.max_ngram, self.drafter.min_ngram)
        q = torch.zeros(len(tokens), self.drafter.vocab_size)
        q[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
        return Proposal(tokens, q)


def lookup(context: list[int], max_tokens: int, max_ngram: int, min_ngram: int) -> list[int]:
    """The tokens after the most recent earlier occurrence of the longest matching tail n-gram."""
    if max_tokens <= 0:
        return []
    for n in range(min(max_ngram, len(context) - 1), min_ngram - 1, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + max_tokens]
    return []
