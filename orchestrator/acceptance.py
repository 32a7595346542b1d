"""Online estimate of Sequoia's positional acceptance vector from verify results.

a_k = (times a node's k-th child was accepted) / (times a visited node had at least k children),
smoothed by a prior worth ``prior_weight`` observations per position: with few observations the
estimate stays near the prior, with many it follows the data. Pure logic, no I/O.
"""

from __future__ import annotations

from specgrove.tree import VerifyResult


class AcceptanceStats:
    def __init__(self, prior: list[float], prior_weight: float = 20.0):
        assert prior and all(0 <= a <= 1 for a in prior) and sum(prior) <= 1 + 1e-9, prior
        self.prior = list(prior)
        self.prior_weight = prior_weight
        self.accepted = [0] * len(prior)  # accepted[k-1]: k-th child accepted
        self.offered = [0] * len(prior)  # offered[k-1]: visited node had >= k children

    def observe(self, result: VerifyResult) -> None:
        for rank, width in zip(result.accepted_rank, result.num_children):
            for k in range(min(width, len(self.offered))):
                self.offered[k] += 1
            if 0 < rank <= len(self.accepted):
                self.accepted[rank - 1] += 1

    def vector(self) -> list[float]:
        raw = [
            (acc + self.prior_weight * prior) / (off + self.prior_weight)
            for acc, off, prior in zip(self.accepted, self.offered, self.prior)
        ]
        total = sum(raw)  # the k-th child is accepted in disjoint events: the a_k sum to at most 1
        return [a / total for a in raw] if total > 1 else raw
