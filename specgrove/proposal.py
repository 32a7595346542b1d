"""What a drafter is: something that opens per-generation draft sessions.

Model drafts grow token trees level by level (``grow_levels``, drafter/tree_growth.py); a chain
is a tree of width one. Model-free drafts (prompt lookup) propose a chain with certainty: their
q is one-hot on each token, so ``propose`` returns just the tokens.
"""

from __future__ import annotations

from typing import Protocol

import torch

from specgrove.budget import DraftBudget
from specgrove.sampling import SamplingParams


class DraftSession(Protocol):
    """Per-generation drafting state (a KV cache, an n-gram index...)."""

    def propose(
        self, context: list[int], max_tokens: int, params: SamplingParams, generator: torch.Generator,
        budget: DraftBudget | None = None,
    ) -> list[int]: ...


class Drafter(Protocol):
    name: str
    vocab_size: int

    def open(self) -> DraftSession: ...
