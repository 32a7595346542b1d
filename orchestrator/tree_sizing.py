"""Hardware-aware tree sizing (Sequoia §4): choose (size m, depth d) maximising expected tokens
per millisecond, G(m, d) / (d·t_draft + t_verify(m + 1) + t_network), from measured costs.

t_verify(n) is the target's time for one pass over n new tokens (the root plus m nodes),
interpolated linearly between measured points; d·t_draft counts one draft pass per level (the
root's, then every level but the deepest). Plain decoding (m = 0: one token per t_verify(1))
is always a candidate, so the planner answers K = 0 when speculation does not pay. Pure logic.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

from orchestrator.sequoia import SequoiaTable, TreeShape


@dataclass(frozen=True)
class CostProfile:
    verify_ms: dict[int, float]  # tokens fed in one target pass -> median ms (must include 1)
    draft_level_ms: float  # one draft pass (one tree level)
    network_ms: float = 0.0  # per round, drafter <-> verifier (0 in process)
    acceptance: dict[str, list[float]] = field(default_factory=dict)  # "greedy" / "sampled" -> vector
    meta: dict = field(default_factory=dict)  # target, draft, hardware, date

    def verify_time(self, tokens: int) -> float:
        points = sorted(self.verify_ms)
        assert points and points[0] == 1, "the profile must measure a 1-token pass"
        if tokens in self.verify_ms:
            return self.verify_ms[tokens]
        i = bisect.bisect_left(points, tokens)
        lo, hi = (points[i - 1], points[i]) if i < len(points) else (points[-2], points[-1])
        slope = (self.verify_ms[hi] - self.verify_ms[lo]) / (hi - lo)
        return self.verify_ms[lo] + slope * (tokens - lo)

    def to_json(self) -> str:
        return json.dumps({
            "verify_ms": {str(k): v for k, v in sorted(self.verify_ms.items())},
            "draft_level_ms": self.draft_level_ms, "network_ms": self.network_ms,
            "acceptance": self.acceptance, "meta": self.meta,
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "CostProfile":
        data = json.loads(text)
        return cls({int(k): float(v) for k, v in data["verify_ms"].items()}, float(data["draft_level_ms"]),
                   float(data.get("network_ms", 0.0)), data.get("acceptance", {}), data.get("meta", {}))


@dataclass(frozen=True)
class Plan:
    size: int  # draft nodes; 0 = plain decoding
    depth: int
    expected_tokens: float  # G(size, depth)
    round_ms: float  # predicted time of one round
    shape: TreeShape | None

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 * self.expected_tokens / self.round_ms


def plan_tree(
    profile: CostProfile, acceptance: list[float], max_size: int = 128, max_depth: int = 12,
    fixed_size: int | None = None, fixed_depth: int | None = None, plain_ms: float | None = None,
) -> Plan:
    """The (size, depth) with the most expected tokens per second; fixed_* pin either choice.
    plain_ms: the measured time of a plain decoding step (default t_verify(1) + t_network)."""
    table = SequoiaTable(acceptance, max_size=max_size, max_depth=max_depth)
    sizes = [fixed_size] if fixed_size else range(1, max_size + 1)
    depths = [fixed_depth] if fixed_depth else range(1, max_depth + 1)
    best = Plan(0, 0, 1.0, plain_ms if plain_ms is not None else profile.verify_time(1) + profile.network_ms, None)
    if fixed_size or fixed_depth:
        best = Plan(0, 0, 0.0, 1.0, None)  # a pinned choice must produce a tree
    for m in sizes:
        for d in depths:
            g = table.expected_tokens(m, d)
            if g == float("-inf"):
                continue
            cost = d * profile.draft_level_ms + profile.verify_time(m + 1) + profile.network_ms
            if g / cost > best.expected_tokens / best.round_ms:
                best = Plan(m, d, g, cost, None)
    if best.size == 0:
        return best
    return Plan(best.size, best.depth, best.expected_tokens, best.round_ms, table.shape(best.size, best.depth))
