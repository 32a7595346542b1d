"""A round's draft budget: how far to draft, and the rule that stops a branch early.

Pure data plus one pure test, so the orchestrator can send it to a drafter anywhere. One
semantics for chains and trees: a token drafted from a distribution q whose stop test fires is
kept, but ends its branch (a chain stops after it; a tree node gets no children).

- entropy rule (AdaEDL): stop when 1 − sqrt(γ·H(q)) < λ, i.e. when H(q) > (1 − λ)² / γ,
  H in nats. 1 − sqrt(γ·H) approximates a lower bound on the token's acceptance probability.
- confidence rule (llama.cpp's draft p-min): stop when max q < min_confidence.
- pass_costs (model-free lookups): what a round drafting l tokens costs, in plain steps
  (pass_costs[l], l = 0 .. max_len; pass_costs[0] = 1), from the planner's verify-cost curve at
  the current load. A lookup proposes the length that maximises its expected tokens per cost,
  and nothing when no length beats a plain step (a 5-token pass costing 1.6 plain steps needs
  0.6 accepted tokens to pay; an 8-token pass may cost little more than a 5-token one).
In greedy mode the warped q is one-hot (H = 0), so both rules read the draft's plain softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DraftBudget:
    max_len: int  # chain: most draft tokens; tree: most levels
    gamma: float | None = None  # entropy rule scale (AdaEDL γ); None = rule off
    lam: float | None = None  # entropy rule threshold λ
    min_confidence: float | None = None  # confidence rule threshold; None = rule off
    pass_costs: tuple[float, ...] | None = None  # a lookup's round of l tokens costs pass_costs[l] plain steps

    def stops(self, logits: torch.Tensor, q: torch.Tensor | None, greedy: bool) -> bool:
        """logits [V] raw draft logits; q [V] the warped distribution the token was drafted from
        (unused, may be None, when greedy)."""
        if self.gamma is None and self.min_confidence is None:
            return False
        dist = torch.softmax(logits.float(), dim=-1) if greedy else q
        if self.gamma is not None and entropy_bound(entropy(dist), self.gamma) < self.lam:
            return True
        return self.min_confidence is not None and float(dist.max()) < self.min_confidence


def entropy(q: torch.Tensor) -> float:
    """Shannon entropy in nats of a distribution [V] (0 log 0 = 0)."""
    positive = q[q > 0]
    return float(-(positive * positive.log()).sum())


def entropy_bound(h: float, gamma: float) -> float:
    """AdaEDL's approximate lower bound on acceptance probability: 1 − sqrt(γ·H)."""
    return 1.0 - math.sqrt(gamma * max(h, 0.0))
