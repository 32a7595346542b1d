"""Where each round's tree shape comes from: a fixed shape, or the Sequoia planner re-planned
from the online acceptance vector every few rounds."""

from __future__ import annotations

from typing import Protocol

from orchestrator.acceptance import AcceptanceStats
from orchestrator.sequoia import TreeShape
from specgrove.tree import VerifyResult


class TreePlan(Protocol):
    max_depth: int

    def shape(self) -> TreeShape: ...

    def observe(self, result: VerifyResult) -> None: ...


class FixedTree:
    """The same shape every round; verify results are recorded into `stats` when given."""

    def __init__(self, shape: TreeShape, stats: AcceptanceStats | None = None):
        self._shape = shape
        self.max_depth = shape.depth
        self.stats = stats

    def shape(self) -> TreeShape:
        return self._shape

    def observe(self, result: VerifyResult) -> None:
        if self.stats is not None:
            self.stats.observe(result)


class AdaptiveTree:
    """Sequoia shape for (size, depth), rebuilt from measured acceptance every `every` rounds."""

    def __init__(self, size: int, depth: int, prior: list[float], every: int = 8):
        from orchestrator.sequoia import SequoiaTable

        self._table_for = lambda vector: SequoiaTable(vector, max_size=size, max_depth=depth)
        self.size, self.max_depth, self.every = size, depth, every
        self.stats = AcceptanceStats(prior)
        self._rounds = 0
        self._shape = self._table_for(prior).shape(size, depth)

    def shape(self) -> TreeShape:
        return self._shape

    def observe(self, result: VerifyResult) -> None:
        self.stats.observe(result)
        self._rounds += 1
        if self._rounds % self.every == 0:
            self._shape = self._table_for(self.stats.vector()).shape(self.size, self.max_depth)
