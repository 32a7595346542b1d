"""Sequoia tree shapes (Chen et al. 2024, arXiv 2402.12374): the DP-optimal draft tree for a
positional acceptance vector, for every size and depth at once.

Acceptance vector a = (a_1, ..., a_B): a_k is the probability that verification at a node
accepts its k-th child (children are tried in the order they were sampled without replacement).
Under Sequoia's positional assumption, a node reached with probability f has its k-th child
reached with probability f·a_k, so a tree's expected number of accepted draft tokens is the sum
of f over its nodes, and the expected tokens per round is G = 1 + that sum (the +1 is the
recovered or bonus token every round emits).

DP, with n counting the root (the last confirmed token, not a draft node) and depth d:
    best(1, d) = 0
    best(n, d) = pack(n − 1, d, 1)                       (n > 1, d ≥ 1; −inf when d = 0)
    pack(0, d, k) = 0
    pack(m, d, k) = max_{1 ≤ s ≤ m} a_k·(1 + best(s, d − 1)) + pack(m − s, d, k + 1)   (k ≤ B)
pack distributes m nodes over the root's children k, k+1, ... as subtrees of depth ≤ d − 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from specgrove.tree import children_of, depths_of

NEG = -np.inf


@dataclass(frozen=True)
class TreeShape:
    """A draft tree shape: node i's parent (−1 = a child of the root), breadth-first order."""

    parents: tuple[int, ...]
    expected_tokens: float  # G: expected tokens emitted per round under the acceptance vector

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def depths(self) -> list[int]:
        return depths_of(self.parents)

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)

    def children(self, node: int) -> list[int]:
        """Children of node (−1 = root), in sampling order."""
        return children_of(self.parents).get(node, [])

    def to_json(self) -> str:
        return json.dumps({"parents": list(self.parents), "expected_tokens": self.expected_tokens})

    @classmethod
    def from_json(cls, text: str) -> "TreeShape":
        data = json.loads(text)
        parents = tuple(int(p) for p in data["parents"])
        if any(not -1 <= p < i for i, p in enumerate(parents)):
            raise ValueError("parents must be breadth-first: each parent index is −1 or an earlier node")
        return cls(parents, float(data["expected_tokens"]))

    def within_depth(self, depth: int) -> "TreeShape":
        """The nodes at most ``depth`` levels deep (their ancestors are too, so parents remap)."""
        depths = self.depths
        if max(depths, default=0) <= depth:
            return self
        kept = [i for i, d in enumerate(depths) if d <= depth]
        new_index = {old: new for new, old in enumerate(kept)}
        return TreeShape(tuple(-1 if self.parents[i] < 0 else new_index[self.parents[i]] for i in kept), 0.0)

    @classmethod
    def chain(cls, length: int, acceptance: "list[float] | None" = None) -> "TreeShape":
        expected = 1.0 + sum(acceptance[0] ** i for i in range(1, length + 1)) if acceptance else 0.0
        return cls(tuple(range(-1, length - 1)), expected)


class SequoiaTable:
    """best(n, d) for all n ≤ max_size + 1 and d ≤ max_depth, with the choices to rebuild trees."""

    def __init__(self, acceptance: "list[float] | np.ndarray", max_size: int = 128, max_depth: int = 12):
        a = np.asarray(acceptance, dtype=np.float64)
        assert a.ndim == 1 and len(a) >= 1 and np.all(a >= 0) and a.sum() <= 1 + 1e-9, a
        self.acceptance = a
        self.max_size = max_size
        self.max_depth = max_depth
        n_max = max_size + 1
        branch = len(a)
        # best[d, n]: n = nodes including the root; choice[d][k, m] = size of child k's subtree
        self.best = np.full((max_depth + 1, n_max + 1), NEG)
        self.best[:, 1] = 0.0
        self.choice: list[np.ndarray] = [np.zeros((branch + 2, n_max + 1), dtype=np.int64)]
        for d in range(1, max_depth + 1):
            child_value = 1.0 + self.best[d - 1, 1:]  # child_value[s - 1]: a subtree of s nodes, depth ≤ d − 1
            pack = np.full((branch + 2, n_max + 1), NEG)
            pack[:, 0] = 0.0
            choice = np.zeros((branch + 2, n_max + 1), dtype=np.int64)
            for k in range(branch, 0, -1):
                feasible = np.isfinite(child_value)
                gain = np.where(feasible, a[k - 1] * np.where(feasible, child_value, 0.0), NEG)  # [n_max]
                for m in range(1, n_max):
                    options = gain[:m] + pack[k + 1, m - 1 :: -1][:m]  # s = 1..m, rest m − s to later children
                    s = int(np.argmax(options))
                    pack[k, m] = options[s]
                    choice[k, m] = s + 1
            self.best[d, 2:] = pack[1, 1:n_max]
            self.choice.append(choice)

    def expected_tokens(self, size: int, depth: int) -> float:
        """G(size, depth): 1 + expected accepted draft tokens of the best tree with `size` draft nodes."""
        return 1.0 + float(self.best[depth, size + 1])

    def shape(self, size: int, depth: int) -> TreeShape:
        """The optimal tree with exactly `size` draft nodes and depth ≤ `depth`, breadth-first."""
        if not np.isfinite(self.best[depth, size + 1]):
            raise ValueError(f"no tree of {size} nodes fits depth {depth} with {len(self.acceptance)} children per node")
        parents: list[int] = []
        queue = [(-1, size + 1, depth)]  # (node, subtree size including it, depth budget)
        while queue:
            node, n, d = queue.pop(0)
            m, k = n - 1, 1
            while m > 0:
                s = int(self.choice[d][k, m])
                parents.append(node)
                queue.append((len(parents) - 1, s, d - 1))
                m, k = m - s, k + 1
        return TreeShape(tuple(parents), self.expected_tokens(size, depth))


def tree_value(parents: "list[int] | tuple[int, ...]", acceptance) -> float:
    """Expected accepted draft tokens of any tree (parents before children) under the vector."""
    reach: list[float] = []
    rank: dict[int, int] = {}
    for parent in parents:
        rank[parent] = rank.get(parent, 0) + 1
        k = rank[parent]
        a_k = acceptance[k - 1] if k <= len(acceptance) else 0.0
        reach.append((1.0 if parent < 0 else reach[parent]) * a_k)
    return float(sum(reach))
