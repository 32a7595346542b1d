"""Where each round's tree shape comes from: a fixed shape, or the Sequoia planner re-planned
from online acceptance. An engine holds one plan; each generation asks it for its own session
plan (``for_session``), so acceptance is estimated per session and globally."""

from __future__ import annotations

from typing import Protocol

from orchestrator.acceptance import AcceptanceStats
from orchestrator.sequoia import SequoiaTable, TreeShape
from specgrove.tree import VerifyResult


class SessionPlan(Protocol):
    max_depth: int

    def shape(self) -> TreeShape: ...

    def observe(self, result: VerifyResult) -> None: ...


class TreePlan(Protocol):
    max_depth: int

    def for_session(self) -> SessionPlan: ...


class FixedTree:
    """The same shape every round; verify results are recorded into `stats` when given."""

    def __init__(self, shape: TreeShape, stats: AcceptanceStats | None = None):
        self._shape = shape
        self.max_depth = shape.depth
        self.stats = stats

    def for_session(self) -> "FixedTree":
        return self

    def shape(self) -> TreeShape:
        return self._shape

    def observe(self, result: VerifyResult) -> None:
        if self.stats is not None:
            self.stats.observe(result)


class AdaptiveTree:
    """Sequoia shapes for (size, depth) from measured acceptance. The global estimate starts
    at the prior and learns from every session; a session starts from the global estimate and
    re-plans from its own every `every` rounds."""

    def __init__(self, size: int, depth: int, prior: list[float], every: int = 8):
        self.size, self.max_depth, self.every = size, depth, every
        self.stats = AcceptanceStats(prior)  # global, across sessions

    def for_session(self) -> "SessionTree":
        return SessionTree(self)

    def shape_for(self, acceptance: list[float]) -> TreeShape:
        return SequoiaTable(acceptance, max_size=self.size, max_depth=self.max_depth).shape(self.size, self.max_depth)


class SessionTree:
    def __init__(self, plan: AdaptiveTree):
        self.plan = plan
        self.max_depth = plan.max_depth
        self.stats = AcceptanceStats(plan.stats.vector(), prior_weight=plan.stats.prior_weight)
        self._rounds = 0
        self._shape = plan.shape_for(self.stats.vector())

    def shape(self) -> TreeShape:
        return self._shape

    def observe(self, result: VerifyResult) -> None:
        self.stats.observe(result)
        self.plan.stats.observe(result)
        self._rounds += 1
        if self._rounds % self.plan.every == 0:
            self._shape = self.plan.shape_for(self.stats.vector())
