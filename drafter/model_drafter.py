"""A draft model proposing a chain: K single-token steps on its own KV cache, q warped like p."""

from __future__ import annotations

import torch

from drafter.proposal import Proposal
from specgrove.models import CachedSequence, CausalLM
from specgrove.sampling import SamplingParams, sample, warp


class ModelDrafter:
    def __init__(self, model: CausalLM):
        self.model = model
        self.name = model.name
        self.vocab_size = model.vocab_size

    def open(self) -> "ModelDraftSession":
        return ModelDraftSession(CachedSequence(self.model))


class ModelDraftSession:
    def __init__(self, sequence: CachedSequence):
        self.sequence = sequence

    def propose(
        self, context: list[int], max_tokens: int, params: SamplingParams, generator: torch.Generator
    ) -> Proposal:
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        for _ in range(max_tokens):
            logits = self.sequence.logits_for(context + tokens, num_logits=1)  # [1, V]
            q = warp(logits, params)  # [1, V]
            tokens.append(int(sample(q, generator)[0]))
            rows.append(q[0])
        if not tokens:
            return Proposal.empty(self.model.vocab_size)
        return Proposal(tokens, torch.stack(rows))
