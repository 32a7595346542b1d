"""The typed hand-offs of tree speculation: ``TokenTree`` (drafter → verifier) and ``VerifyResult``.

Node order is breadth-first: every node's parent comes before it, and the children of a node
appear in the order they were sampled (without replacement) from the draft distribution q at
that node. The root is the last confirmed token; it is not a node. Row 0 of the per-row fields
belongs to the root, row i + 1 to node i. q is stored sparse (its top-N support): the drafter
samples from exactly this truncated q, so verification with it stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def depths_of(parents: "list[int] | tuple[int, ...]") -> list[int]:
    """Depth of each node (1 for children of the root), parents listed before children."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def children_of(parents: "list[int] | tuple[int, ...]") -> dict[int, list[int]]:
    """node (−1 = root) -> its children in order; nodes without children are absent."""
    table: dict[int, list[int]] = {}
    for child, parent in enumerate(parents):
        table.setdefault(parent, []).append(child)
    return table


@dataclass(frozen=True)
class TokenTree:
    tokens: torch.Tensor  # [N] long, the draft token of each node
    parents: torch.Tensor  # [N] long, parent node index, −1 for children of the root
    q_ids: torch.Tensor  # [N + 1, S] long, support of q at the root (row 0) and at each node; −1 pads
    q_probs: torch.Tensor  # [N + 1, S] fp32, q on that support (0 on padding); rows of leaves may be all 0

    def __post_init__(self):
        n = self.tokens.shape[0]
        assert self.tokens.ndim == 1 and self.parents.shape == (n,), (self.tokens.shape, self.parents.shape)
        assert self.q_ids.ndim == 2 and self.q_ids.shape[0] == n + 1, self.q_ids.shape
        assert self.q_probs.shape == self.q_ids.shape, (self.q_probs.shape, self.q_ids.shape)
        assert all(-1 <= int(p) < i for i, p in enumerate(self.parents.tolist())), "parents must come first"

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def depths(self) -> list[int]:  # 1 for children of the root
        return depths_of(self.parents.tolist())

    def children(self, node: int) -> list[int]:
        """Children of node (−1 = root), in sampling order."""
        return children_of(self.parents.tolist()).get(node, [])

    def dense_q(self, row: int, vocab_size: int) -> torch.Tensor:  # [V]
        q = torch.zeros(vocab_size)
        keep = self.q_ids[row] >= 0
        q[self.q_ids[row][keep]] = self.q_probs[row][keep]
        return q

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root's child down to node."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]

    def paths(self) -> list[list[int]]:
        """Each node's tokens from the root's child down to the node itself (parents come first)."""
        tokens, out = self.tokens.tolist(), []
        for node, parent in enumerate(self.parents.tolist()):
            out.append((out[parent] if parent >= 0 else []) + [tokens[node]])
        return out

    @classmethod
    def from_lists(cls, tokens: list[int], parents: list[int], q: dict[int, dict[int, float]] | None = None) -> "TokenTree":
        """Builder for tests: q maps a row (0 = root, i + 1 = node i) to {token: probability}."""
        q = q or {}
        width = max((len(v) for v in q.values()), default=1)
        ids = torch.full((len(tokens) + 1, width), -1, dtype=torch.long)
        probs = torch.zeros(len(tokens) + 1, width)
        for row, dist in q.items():
            for j, (token, prob) in enumerate(dist.items()):
                ids[row, j], probs[row, j] = token, prob
        return cls(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long), ids, probs)


@dataclass(frozen=True)
class VerifyResult:
    accepted_nodes: list[int]  # node indices of the accepted path, from the root's child down
    accepted_tokens: list[int]  # their tokens
    next_token: int  # the recovered token (all children of the last node rejected) or the bonus token
    accepted_rank: list[int]  # per visited node: 1-based rank of the accepted child, 0 if none accepted
    num_children: list[int]  # per visited node: how many children it had (0 = a leaf: bonus token)

    @property
    def num_emitted(self) -> int:
        return len(self.accepted_tokens) + 1
