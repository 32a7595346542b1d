"""Network- and hardware-aware round planning for the distributed pipeline. Pure logic.

``LinkStats`` keeps exponentially weighted averages per drafter–verifier pair, measured by the
orchestrator every round: the time of one draft level, the target's verify time (normalised to a
1-token pass with the verify-cost curve), the network time of a speculative round (its
orchestrator-side round trip minus draft and verify compute, i.e. every hop of
orchestrator → drafter → verifier → drafter → orchestrator), the part of a round that
draft-ahead ran before it was asked for (its overlap: the orchestrator waits draft + verify +
network − overlap), bytes per round, and the round trip of a plain decoding step (orchestrator →
verifier → orchestrator).

``RoundPlanner`` (one per session) turns them into each round's tree: in tree mode it picks the
Sequoia (size, depth) maximising expected tokens per millisecond with the network time added to
every speculative round, and K = 0 (plain decoding on the verifier) when speculation does not
pay (with size and depth both pinned it always drafts that shape); a slow link makes each round
dearer, so trees grow to amortise it, until K = 0 wins. While
at K = 0 it probes a small tree now and then so that estimates stay fresh: after ``probe_every``
plain rounds, then twice as many after each probe that does not turn speculation back on (up to
``max_probe_every``), since a probe of a draft that does not pay is a loss (on chat with the
feature draft, frequent probes cost measurably against plain decoding; backing off recovers most
of it). With S sessions
batched each waits S times as long, so the batch as a whole probes as often as one session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator.acceptance import AcceptanceStats
from orchestrator.tree_sizing import CostProfile, Plan, plan_tree
from orchestrator.sequoia import SequoiaTable, TreeShape, tree_value
from specgrove.config import LOAD_MARGIN
from specgrove.tree import VerifyResult

# Verify cost of n tokens relative to 1 token: the runner's pass on the 2-core CPU
# (docs/bench/cpu-cost-runner.json: 1.0 to 1.1 up to 8 tokens, 1.6 at 16), extended; a GPU's is
# flatter still. Replaced by a calibration profile's own curve when the orchestrator has one, and
# corrected by every pass the verifier reports.
PRIOR_VERIFY_RATIO = {1: 1.0, 2: 1.04, 4: 1.08, 8: 1.15, 16: 1.6, 32: 2.6, 64: 4.6, 128: 8.0}
DEFAULT_PRIOR_ACCEPTANCE = [0.5, 0.15, 0.05]
PROBE_SIZE, PROBE_DEPTH = 4, 3


# The verify-cost curve is learned from the verifier's own passes (their sizes and times): on a
# grid of pass sizes, each point an average over its last passes (weight LEARN_ALPHA), trusted
# from LEARN_MIN passes on. The prior (or the calibration profile) gives the shape elsewhere.
LEARN_GRID = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192,
              224, 256)
LEARN_ALPHA, LEARN_MIN = 0.1, 4


def ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


def _grid_point(tokens: float) -> int:
    return min(LEARN_GRID, key=lambda g: abs(math.log(g) - math.log(max(1.0, tokens))))


@dataclass
class LinkStats:
    alpha: float = 0.3
    verify_ratio: dict[int, float] = field(default_factory=lambda: dict(PRIOR_VERIFY_RATIO))
    draft_level_ms: float | None = None
    verify_1_ms: float | None = None
    network_ms: float | None = None
    # Draft-ahead: how much of a speculative round ran before the orchestrator asked for it (0
    # for a round drawn when asked). A round costs draft + verify + network − overlap.
    overlap_ms: float = 0.0
    plain_ms: float | None = None  # round trip of a K = 0 step
    # What a plain step waits beyond its pass: its hops (orchestrator → verifier and back) and,
    # under load, its wait for a pass. A speculative round's own (``network_ms``) is weighed
    # against it, so a chain pays only for what it waits more than a plain step does.
    plain_network_ms: float | None = None
    tree_bytes: float | None = None
    rounds: int = 0
    # Load: the sessions sharing the verifier (continuous batching). Each decides as the others
    # do, so the planner weighs the batch's goodput: S rounds of n tokens make a pass of S·n
    # tokens. A draft level is measured as the draft pass it rode in, which the sessions drafting
    # at once share (drafter/batching.py), so it carries the load itself.
    sessions: float = 1.0
    # A pass of 2 .. min_rows − 1 tokens is fed as min_rows (the target's ``min_pass_rows``: on
    # the CPU, 2–3-row matrix products are slower than 4-row ones), so it costs what that pass does.
    min_rows: int = 1
    # The curve learned from the verifier's passes: per grid point, the average of (pass ms / the
    # prior curve there) and how many passes it has seen (``observe_pass``).
    learned: dict[int, float] = field(default_factory=dict)
    learned_passes: dict[int, int] = field(default_factory=dict)

    def ratio(self, tokens: float) -> float:
        """A pass of ``tokens`` (rows of more than one token) as a share of a 1-token pass."""
        return self._curve(self.min_rows if 1 < tokens < self.min_rows else tokens)

    def batch_ratio(self, tokens: float) -> float:
        """A round of ``tokens`` at the current load, as a share of a lone 1-token pass: its pass
        holds one such round per session (the cost per round is the pass's). A pass of plain
        steps is never padded, whatever the number of sessions."""
        return self._curve(self.sessions) if tokens <= 1 else self.ratio(self.sessions * tokens)

    def round_costs(self, max_len: int, loaded: bool = True) -> tuple[float, ...]:
        """What a chain round of l draft tokens (a pass of l + 1) costs, in plain steps, for
        l = 0 .. max_len: at the current load, or load-blind (a pinned request's, reproducible)."""
        ratio = self.batch_ratio if loaded else self.ratio
        base = ratio(1)
        return tuple(ratio(length + 1) / base for length in range(max_len + 1))

    def _prior(self, tokens: float) -> float:
        return CostProfile(self.verify_ratio, 0.0).verify_time(tokens)

    def _curve(self, tokens: float) -> float:
        """The pass cost of ``tokens`` as a share of a 1-token pass: the prior's shape, corrected
        by what the verifier's passes measured (between measured sizes the correction is
        interpolated in log size; beyond them, the nearest one's)."""
        points = sorted(p for p, n in self.learned_passes.items() if n >= LEARN_MIN)
        if not points:
            return self._prior(tokens)
        return self._prior(tokens) * self._correction(tokens, points) / self._correction(1, points)

    def _correction(self, tokens: float, points: list[int]) -> float:
        x = math.log(max(1.0, tokens))
        logs = [math.log(p) for p in points]
        if x <= logs[0]:
            return self.learned[points[0]]
        if x >= logs[-1]:
            return self.learned[points[-1]]
        i = next(i for i, lx in enumerate(logs) if lx >= x)
        w = (x - logs[i - 1]) / (logs[i] - logs[i - 1])
        lo, hi = math.log(self.learned[points[i - 1]]), math.log(self.learned[points[i]])
        return math.exp(lo + w * (hi - lo))

    def observe_pass(self, tokens: int, ms: float) -> None:
        """A verifier pass over ``tokens`` tokens (all sessions' rows) took ``ms``."""
        if tokens < 1 or not ms > 0:
            return
        rows = self.min_rows if 1 < tokens < self.min_rows else tokens
        point = _grid_point(rows)
        self.learned[point] = ewma(self.learned.get(point), ms / self._prior(rows), LEARN_ALPHA)
        self.learned_passes[point] = self.learned_passes.get(point, 0) + 1

    def observe_load(self, sessions: float, tokens_per_pass: float) -> None:
        """The verifier's load: the sessions it holds (tokens per pass: kept for reports)."""
        self.sessions = ewma(self.sessions, max(1.0, sessions), self.alpha)

    def observe_tree(self, rtt_ms: float, draft_ms: float, verify_ms: float, size: int, depth: int,
                     tree_bytes: int, overlap_ms: float = 0.0) -> None:
        """A speculative round: the orchestrator waited ``rtt_ms`` for it, of which ``overlap_ms``
        had already run before it asked (draft-ahead), so its hops took rtt + overlap − draft − verify."""
        self.rounds += 1
        self.draft_level_ms = ewma(self.draft_level_ms, draft_ms / max(1, depth), self.alpha)
        self.verify_1_ms = ewma(self.verify_1_ms, verify_ms / self.batch_ratio(size + 1), self.alpha)
        self.network_ms = ewma(self.network_ms, max(0.0, rtt_ms + overlap_ms - draft_ms - verify_ms), self.alpha)
        self.overlap_ms = ewma(self.overlap_ms, max(0.0, overlap_ms), self.alpha)
        self.tree_bytes = ewma(self.tree_bytes, float(tree_bytes), self.alpha)

    @property
    def exposed_network_ms(self) -> float:
        """The network time a speculative round adds to the orchestrator's wait: its hops less
        what draft-ahead overlaps (never below 0: an overlap is counted against the hops only)."""
        return max(0.0, (self.network_ms or 0.0) - self.overlap_ms)

    def observe_plain(self, rtt_ms: float, verify_ms: float) -> None:
        """A plain step: the orchestrator (or the engine) waited ``rtt_ms`` for it, of which the
        verifier's pass took ``verify_ms``."""
        self.rounds += 1
        self.plain_ms = ewma(self.plain_ms, rtt_ms, self.alpha)
        self.plain_network_ms = ewma(self.plain_network_ms, max(0.0, rtt_ms - verify_ms), self.alpha)
        self.verify_1_ms = ewma(self.verify_1_ms, verify_ms / self.batch_ratio(1), self.alpha)

    @classmethod
    def from_profile(cls, profile: CostProfile) -> "LinkStats":
        """Costs already measured (a calibration profile): the planner plans from the first round."""
        one = profile.verify_time(1)
        return cls(verify_ratio={n: ms / one for n, ms in profile.verify_ms.items()},
                   draft_level_ms=profile.draft_level_ms, verify_1_ms=one, network_ms=profile.network_ms,
                   plain_ms=one + profile.network_ms)

    @property
    def measured(self) -> bool:
        return None not in (self.draft_level_ms, self.verify_1_ms, self.network_ms, self.plain_ms)

    def profile(self) -> CostProfile:
        """The costs of a round of n tokens at the current load (its pass: sessions · n tokens)."""
        assert self.measured
        return CostProfile({n: self.verify_1_ms * self.batch_ratio(n) for n in self.verify_ratio},
                           self.draft_level_ms, self.exposed_network_ms)

    def summary(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in {
            "draft_level_ms": self.draft_level_ms, "verify_1_ms": self.verify_1_ms, "network_ms": self.network_ms,
            "overlap_ms": self.overlap_ms, "plain_ms": self.plain_ms, "plain_network_ms": self.plain_network_ms,
            "tree_bytes": self.tree_bytes, "rounds": self.rounds,
            "sessions": self.sessions}.items()}


@dataclass(frozen=True)
class RoundChoice:
    shape: TreeShape | None  # None = plain decoding (K = 0)
    reason: str  # "plan" | "probe" | "measure" | "fixed" | "ar" | "load" (batched: speculation does not pay)

    @property
    def size(self) -> int:
        return self.shape.size if self.shape else 0

    @property
    def depth(self) -> int:
        return self.shape.depth if self.shape else 0


class RoundPlanner:
    """Each round's tree for one session, in process and over the network alike. mode: 'ar'
    (always K = 0), 'chain' (a chain of draft_len; the stop policy may end it early), 'tree' (the
    hardware- and network-aware planner; size and depth may be pinned, or the shape itself).
    Verify results feed the session's acceptance estimate and, when given, a shared one."""

    def __init__(self, mode: str, link: LinkStats, acceptance: AcceptanceStats, draft_len: int = 4,
                 fixed_size: int | None = None, fixed_depth: int | None = None, max_size: int = 64,
                 max_depth: int = 8, replan_every: int = 4, probe_every: int = 16, max_probe_every: int = 256,
                 fixed_shape: TreeShape | None = None, shared: AcceptanceStats | None = None,
                 adaptive: bool = True):
        self.mode, self.link, self.acceptance, self.shared = mode, link, acceptance, shared
        self.draft_len, self.fixed_size, self.fixed_depth = draft_len, fixed_size, fixed_depth
        self.fixed_shape = fixed_shape
        self.adaptive = adaptive  # chains: goodput may switch them off under load
        self.max_size, self.max_depth = max_size, max_depth
        self.replan_every, self.probe_every = replan_every, probe_every
        self.plan: Plan | None = None
        self._since_plan = 0
        self.max_probe_every = max_probe_every
        self._plain_rounds = 0
        self._probe_gap = probe_every  # plain rounds until the next probe (doubles while probes lose)
        self._pinned: TreeShape | None = None

    def next(self) -> RoundChoice:
        if self.mode == "ar" or (self.mode == "chain" and self.draft_len == 0):
            return RoundChoice(None, "ar")
        if self.mode == "chain":
            if not self.adaptive:
                return RoundChoice(TreeShape.chain(self.draft_len), "fixed")
            length = self._chain_length()  # goodput: the best K in 0 .. draft_len at this load
            if length == 0:
                if not self._probe_due():
                    return RoundChoice(None, "load" if self.link.sessions >= 1.5 else "plan")
                return RoundChoice(TreeShape.chain(self.draft_len), "probe")
            self._speculating()
            return RoundChoice(TreeShape.chain(length), "plan")
        if self.fixed_shape is not None:
            return RoundChoice(self.fixed_shape, "fixed")
        if self.fixed_size and self.fixed_depth:  # pinned: Sequoia's shape of that size for the acceptance seen
            if self._pinned is None or self._since_plan >= self.replan_every:
                self._pinned, self._since_plan = self._shape(self.fixed_size, self.fixed_depth), 0
            self._since_plan += 1
            return RoundChoice(self._pinned, "fixed")
        if self.link.plain_ms is None:
            return RoundChoice(None, "measure")  # one plain step measures the K = 0 alternative
        if not self.link.measured:
            return RoundChoice(self._shape(PROBE_SIZE, PROBE_DEPTH), "measure")
        if self.plan is None or self._since_plan >= self.replan_every:
            self.plan = plan_tree(self.link.profile(), self.acceptance.vector(), max_size=self.max_size,
                                  max_depth=self.max_depth, fixed_size=self.fixed_size,
                                  fixed_depth=self.fixed_depth, plain_ms=self.link.plain_ms)
            self._since_plan = 0
        self._since_plan += 1
        if self.plan.size == 0:
            if self._probe_due():
                return RoundChoice(self._shape(PROBE_SIZE, PROBE_DEPTH), "probe")
            return RoundChoice(None, "plan")
        self._speculating()
        return RoundChoice(self.plan.shape, "plan")

    def _probe_due(self) -> bool:
        """One more plain round: is it time to probe (and back off the next probe)?"""
        self._plain_rounds += 1
        if self._plain_rounds < self._probe_gap * max(1, round(self.link.sessions)):  # S sessions probe
            return False  # in turn: the batch probes as often as one session would, not S times as often
        self._plain_rounds = 0
        self._probe_gap = min(2 * self._probe_gap, self.max_probe_every)
        return True

    def probes_within(self, rounds: int) -> bool:
        """Whether one of the next ``rounds`` plain rounds would be a probe instead (a step run
        ahead in its place would be collected first, and the probe lost)."""
        return self._plain_rounds + rounds >= self._probe_gap * max(1, round(self.link.sessions))

    def _speculating(self) -> None:
        """Speculation pays again: the next stretch of plain rounds probes after probe_every."""
        self._plain_rounds, self._probe_gap = 0, self.probe_every

    def observe(self, result: VerifyResult) -> None:
        self.acceptance.observe(result)
        if self.shared is not None:
            self.shared.observe(result)

    def _chain_length(self) -> int:
        """Goodput (SmartSpec, arXiv 2406.14066): the chain length K in 0 .. draft_len with the
        most expected tokens (1 + accepted) per millisecond, with every session of the batch
        choosing alike: S rounds of K + 1 tokens make the shared pass, and K draft levels cost K
        of the draft passes the sessions share (as measured under this load). What each kind of
        round waits beyond its compute counts as measured: a chain's hops and a plain step's,
        and under load the wait for a pass (a session that drafts while the others step plainly
        misses their pass and waits for the next, so its round can take much longer than a plain
        step's). K = 0 (a plain step) when no chain
        beats one token per plain step: with one session when the draft does not pay on this
        text, with many when the batch makes it a loss."""
        acceptance = self.acceptance.vector()
        verify_1 = self.link.verify_1_ms or 1.0
        best, best_rate = 0, 1.0 / (verify_1 * self.link.batch_ratio(1) + (self.link.plain_network_ms or 0.0))
        if self.link.sessions >= 1.5:  # batched: on top of the waits measured, a chain must beat plain
            best_rate *= LOAD_MARGIN  # steps by this much
        for length in range(1, self.draft_len + 1):
            expected = 1.0 + tree_value(TreeShape.chain(length).parents, acceptance)
            draft_ms = length * (self.link.draft_level_ms or 0.0)
            spec_ms = verify_1 * self.link.batch_ratio(length + 1) + draft_ms + self.link.exposed_network_ms
            if expected / spec_ms > best_rate:
                best, best_rate = length, expected / spec_ms
        return best

    def _shape(self, size: int, depth: int) -> TreeShape:
        size = self.fixed_size or size
        depth = self.fixed_depth or depth
        return SequoiaTable(self.acceptance.vector(), max_size=size, max_depth=depth).shape(size, depth)
