"""The drafter's hand-off to the verifier for a chain: draft tokens and the q each came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specgrove.budget import DraftBudget
from specgrove.sampling import SamplingParams


@dataclass(frozen=True)
class Proposal:
    tokens: list[int]  # K draft tokens, K may be 0 (plain decoding this round)
    q: torch.Tensor  # [K, V] fp32, the warped draft distribution each token was sampled from

    @classmethod
    def empty(cls, vocab_size: int) -> "Proposal":
        return cls([], torch.zeros(0, vocab_size))


class DraftSession(Protocol):
    """Per-generation drafting state (a KV cache, an n-gram index...)."""

    def propose(
        self, context: list[int], max_tokens: int, params: SamplingParams, generator: torch.Generator,
        budget: DraftBudget | None = None,
    ) -> Proposal: ...


class Drafter(Protocol):
    name: str
    vocab_size: int

    def open(self) -> DraftSession: ...
