"""Draft-length policies: each round's DraftBudget, adapted from verify outcomes. Pure logic.

All policies share one interface: ``budget()`` before a round, ``observe(drafted, accepted)``
after it, ``state()`` for reporting.

- ``static``: always K tokens (or K levels).
- ``max-confidence``: K at most, a branch ends at a token drafted with max q < p_min
  (llama.cpp's draft p-min; default p_min = 0.5).
- ``heuristic``: transformers' schedule: K += 2 after a fully accepted round, else K −= 1 (≥ 1).
- ``adaedl`` (Agrawal, Jeon, Lee 2024): a branch ends at a token drafted from q with
  1 − sqrt(γ·H(q)) < λ, and λ adapts online. The exact update implemented here:

      α̂ ← β·α̂ + (1 − β)·(accepted / drafted)          (only rounds that drafted)
      λ ← clip(λ + η·(α* − α̂), λ_min, λ_max)

  Defaults: γ = 0.2 (the paper's), λ₀ = 0.5, β = 0.9, η = 0.05, α* = 0.5, λ ∈ [0.05, 0.95],
  α̂₀ = α*. Why: the bound is only an approximation whose calibration depends on the draft /
  target pair and the temperature. When observed acceptance runs below the target rate α*,
  drafted tokens are being wasted, so λ rises and branches end sooner; when acceptance runs
  above it, λ falls and branches run longer. α* = 0.5 is where, with verification nearly free
  (measured on this CPU for ≤ 8 tokens, and typical on GPUs), one more draft token of cost c
  ≲ 0.5 target steps roughly pays for itself. The EMA (β = 0.9, ~10 rounds) keeps λ from
  chasing single rounds; η = 0.05 moves λ across its range in a few dozen rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from specgrove.budget import DraftBudget

POLICIES = ("adaedl", "static", "max-confidence", "heuristic")


class StaticPolicy:
    name = "static"

    def __init__(self, max_len: int):
        self.max_len = max_len

    def budget(self) -> DraftBudget:
        return DraftBudget(self.max_len)

    def observe(self, drafted: int, accepted: int) -> None:
        pass

    def state(self) -> dict:
        return {}


class MaxConfidencePolicy(StaticPolicy):
    name = "max-confidence"

    def __init__(self, max_len: int, min_confidence: float = 0.5):
        super().__init__(max_len)
        self.min_confidence = min_confidence

    def budget(self) -> DraftBudget:
        return DraftBudget(self.max_len, min_confidence=self.min_confidence)


class HeuristicPolicy:
    """transformers' assisted-generation 'heuristic' schedule."""

    name = "heuristic"

    def __init__(self, max_len: int, start: int = 4):
        self.max_len = max_len
        self.k = min(start, max_len)

    def budget(self) -> DraftBudget:
        return DraftBudget(self.k)

    def observe(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.k = min(self.max_len, self.k + 2) if accepted == drafted else max(1, self.k - 1)

    def state(self) -> dict:
        return {"k": self.k}


@dataclass
class AdaEDLConfig:
    gamma: float = 0.2  # entropy scale γ
    lam: float = 0.5  # initial threshold λ₀
    target_acceptance: float = 0.5  # α*
    beta: float = 0.9  # EMA weight of the running acceptance α̂
    step: float = 0.05  # η
    lam_min: float = 0.05
    lam_max: float = 0.95
    adapt: bool = True  # False keeps λ fixed (an ablation)


class AdaEDLPolicy:
    name = "adaedl"

    def __init__(self, max_len: int, config: AdaEDLConfig | None = None):
        self.max_len = max_len
        self.config = config or AdaEDLConfig()
        self.lam = min(max(self.config.lam, self.config.lam_min), self.config.lam_max)
        self.acceptance = self.config.target_acceptance  # α̂

    def budget(self) -> DraftBudget:
        return DraftBudget(self.max_len, gamma=self.config.gamma, lam=self.lam)

    def observe(self, drafted: int, accepted: int) -> None:
        if drafted == 0 or not self.config.adapt:
            return
        c = self.config
        self.acceptance = c.beta * self.acceptance + (1 - c.beta) * accepted / drafted
        self.lam = min(c.lam_max, max(c.lam_min, self.lam + c.step * (c.target_acceptance - self.acceptance)))

    def state(self) -> dict:
        return {"lambda": self.lam, "running_acceptance": self.acceptance}


def make_policy(name: str, max_len: int, gamma: float = 0.2, lam: float = 0.5):
    from specgrove.errors import InvalidArgument, OutOfRange

    if not 0 < gamma <= 10:
        raise OutOfRange("adaedl_gamma", f"must be in (0, 10], got {gamma}")
    if not 0 <= lam <= 1:
        raise OutOfRange("adaedl_lambda", f"must be in [0, 1], got {lam}")
    if name == "adaedl":
        return AdaEDLPolicy(max_len, AdaEDLConfig(gamma=gamma, lam=lam))
    if name == "static":
        return StaticPolicy(max_len)
    if name == "max-confidence":
        return MaxConfidencePolicy(max_len)
    if name == "heuristic":
        return HeuristicPolicy(max_len)
    raise InvalidArgument("stop_policy", f"must be one of {', '.join(POLICIES)}, got {name!r}")
