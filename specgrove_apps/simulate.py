"""``specgrove simulate``: a discrete-event model of a fleet — N drafters × M verifiers × S
concurrent sessions — fed by measured cost profiles. It predicts aggregate goodput (tokens/s),
TTFT and TPOT, each verifier's share of the tokens and each pool's utilisation, and sweeps
drafter:verifier mixes for a budget (in the manner of DSD's simulator, arXiv 2511.21669).

The core (``FleetProfile``, ``SimConfig``, ``simulate``, ``recommend``, ``predict_small_fleets``)
is pure logic; the loaders at the end read cost curves, calibration profiles, a shipped draft's
acceptance and the k8s overlays' GPU products.

What is modelled:

- **Sessions.** S sessions, each generating G tokens. By default all S start at t = 0 and none
  after (goodput = S·G / the last one's finish). With ``total_sessions`` the fleet is a closed
  loop: a new session starts (zero think time) as soon as one finishes, until that many have
  started. A prompt of ``prompt_tokens`` tokens is prefilled in a pass of its own on the
  verifier (as the worker runs a long feed alone), which emits the first token; with 0, the
  first token is the first round's.
- **Placement.** ``round_robin`` over drafters and verifiers (orchestrator/placement.py's rule
  before load-aware routing; the default), or any ``placement(index, FleetView) -> (drafter,
  verifier)``: ``least_loaded`` (fewest active sessions), ``predicted_pass`` (the shortest
  predicted pass with the session added, as placement.py's load-aware routing). Called once, when
  each session starts; a session never moves.
- **A round** (a chain of K draft tokens; K fixed, or picked once per run by expected tokens per
  ms as the round planner's ``_chain_length`` does, with S/M rows per pass, or drawn for each
  round from a measured mix, ``chain_mix``, as a draft-length policy like AdaEDL spreads it,
  K = 0 a plain step): the orchestrator's
  per-round overhead (every round, the first too), then the hops of ``LinkStats``' path, each
  ``link_ms`` one way: orchestrator → drafter, K draft levels, drafter → verifier, the verify pass, verifier →
  drafter → orchestrator (4 hops); a plain step (K = 0, or no drafters) goes orchestrator →
  verifier → orchestrator (2 hops).
- **A drafter** is a server that runs one level pass at a time over every session waiting for a
  level (up to ``max_draft_batch``): a pass of R rows costs ``draft_ms(R)``; a session needing
  more levels queues again at once, with whoever arrived meanwhile (drafter/batching.py).
- **A verifier** is a server with continuous batching (verifier/worker.py): when free it takes
  the oldest waiting rounds, one per session, up to ``max_batch``, into one pass of R rows ×
  T tokens (rows right-padded to the longest) costing ``verify_ms(R, T)``. With ``gather`` it
  first waits for the last pass's sessions to come back, at most half a pass (the worker's
  ``_gather``; its 3 × return-gap bound is left out).
- **Acceptance.** The i-th draft token is accepted with probability a_i given the previous ones
  were (depths past the vector: 0); a round emits the accepted tokens + 1. Sampled with a seeded
  RNG, or the expected value (fractional tokens) with ``expected``.
- **Heterogeneous fleets**: per-worker slowdown factors multiply that worker's pass costs.
- **A shared host** (``SimConfig.host_slowdown``): every worker on one machine, as a loopback
  fleet is. Passes computing at once share it: with k of them under way each progresses at
  1 / slowdown(k) of its own speed (processor sharing with the measured slowdown of k passes at
  once, which on a small CPU is far worse than k: each process's threads spin against the
  others'). Every pass counts alike, so a small draft pass beside a verify pass is taken for a
  second verify pass (checked on loopback: it predicts two oversubscribed verifiers within 11%,
  and under-predicts a drafter and a verifier that overlap). ``FleetProfile.min_verify_ms``: a
  verify pass lasts at least this long, the rest a wait that computes nothing (an emulated
  GPU-bound verifier).

What it leaves out: draft-ahead and guessed draft-ahead (a drafter idles while its sessions
verify); trees (chains only); the planner adapting K round by round, its probes, and acceptance
that varies by prompt or position; the drafter's own prefill; KV-cache capacity, eviction and
re-prefill; the orchestrator as a contended resource (its overhead is a pure delay) and Redis;
link bandwidth and jitter; worker failures and moves;
arrivals (open-loop load) other than the closed loop above; the verifier's sampling and
structured-output masks (only the pass cost counts); on a shared host, the orchestrator's and the
transport's own CPU time (the overhead is a delay that takes no core). Unmeasured GPUs are modelled by scaling the
measured curve by HBM bandwidth (decode passes are memory-bound): launch-bound passes (small
models, eager mode) are far flatter than that — measure the overlay's GPUs where possible.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from specgrove.config import LOAD_MARGIN, MAX_BATCH, ROUND_TOKENS

# Hops of a round: orchestrator → drafter → verifier → drafter → orchestrator; of a plain step
# (and a prefill): orchestrator → verifier → orchestrator.
SPEC_HOPS, PLAIN_HOPS = 4, 2
MAX_DRAFT_BATCH = MAX_BATCH  # drafter/batching.py: sessions in one draft pass
GATHER_FRACTION = 0.5  # the verifier waits for its last pass's sessions at most half a pass


def _interp(points: dict[float, float], x: float) -> float:
    """Piecewise linear through ``points``; below the first point its value, above the last the
    last two points' slope (never negative: more work never costs less)."""
    xs = sorted(points)
    if len(xs) == 1 or x <= xs[0]:
        return points[xs[0]]
    if x >= xs[-1]:
        lo, hi = xs[-2], xs[-1]
        slope = max(0.0, (points[hi] - points[lo]) / (hi - lo))
        return points[hi] + slope * (x - hi)
    i = next(i for i, p in enumerate(xs) if p >= x)
    lo, hi = xs[i - 1], xs[i]
    return points[lo] + (points[hi] - points[lo]) * (x - lo) / (hi - lo)


@dataclass(frozen=True)
class FleetProfile:
    """Measured costs of one drafter GPU and one verifier GPU, and the draft's acceptance."""

    verify_table: dict[int, dict[int, float]]  # rows -> tokens per row -> ms of one verify pass
    draft_table: dict[int, float] = field(default_factory=lambda: {1: 5.0})  # rows -> ms of one level
    acceptance: tuple[float, ...] = (0.7, 0.5, 0.3)  # a_i: i-th draft token accepted given the previous
    chain_length: int | None = None  # K; None: picked by expected tokens per ms (the planner's way)
    max_chain: int = 8
    link_ms: float = 0.0  # one way, every hop
    overhead_ms: float = 0.0  # the orchestrator's own time per round
    max_batch: int = MAX_BATCH
    max_draft_batch: int = MAX_DRAFT_BATCH
    min_verify_ms: float = 0.0  # a verify pass lasts at least this long (the rest computes nothing)
    # (K, share of rounds): each round's chain length drawn from this measured mix (a draft-length
    # policy's, such as AdaEDL's: K = 0 is a plain step); () : every round K (chain_length or chosen)
    chain_mix: tuple[tuple[int, float], ...] = ()
    meta: dict = field(default_factory=dict)  # where the numbers came from (reference_bandwidth_gbs, ...)

    def verify_ms(self, rows: int, tokens: int) -> float:
        """One pass of ``rows`` rows of ``tokens`` tokens: interpolated in tokens, then in rows; a
        table of 1-row passes only (a calibration profile) is read at rows × tokens."""
        if set(self.verify_table) == {1}:
            return _interp(self.verify_table[1], rows * tokens)
        return _interp({r: _interp(curve, tokens) for r, curve in self.verify_table.items()}, rows)

    def pass_ms(self, rows: int, tokens: int) -> float:
        """A verify pass as it lasts alone: its cost, or ``min_verify_ms`` when longer."""
        return max(self.verify_ms(rows, tokens), self.min_verify_ms)

    def draft_ms(self, rows: int) -> float:
        return _interp(self.draft_table, rows)

    def expected_tokens(self, k: int) -> float:
        """Tokens a round of K draft tokens emits on average: 1 + Σ_j Π_{i ≤ j} a_i."""
        total, reach = 1.0, 1.0
        for i in range(k):
            reach *= self.acceptance[i] if i < len(self.acceptance) else 0.0
            total += reach
        return total

    def choose_chain(self, verify_rows: int, draft_rows: int) -> int:
        """K in 0 .. max_chain with the most expected tokens per ms when each pass holds
        ``verify_rows`` rounds and each draft pass ``draft_rows`` sessions (the round planner's
        ``_chain_length``, its load margin included); ``chain_length`` when pinned."""
        if self.chain_length is not None:
            return self.chain_length
        best, best_rate = 0, 1.0 / (self.pass_ms(verify_rows, 1) + PLAIN_HOPS * self.link_ms + self.overhead_ms)
        if verify_rows >= 1.5:
            best_rate *= LOAD_MARGIN
        for k in range(1, self.max_chain + 1):
            ms = (self.pass_ms(verify_rows, k + 1) + k * self.draft_ms(draft_rows) + SPEC_HOPS * self.link_ms
                  + self.overhead_ms)
            if self.expected_tokens(k) / ms > best_rate:
                best, best_rate = k, self.expected_tokens(k) / ms
        return best

    def scaled(self, verify: float = 1.0, draft: float = 1.0) -> "FleetProfile":
        """The same model on other hardware: every verify pass × ``verify``, draft pass × ``draft``."""
        table = {r: {t: ms * verify for t, ms in c.items()} for r, c in self.verify_table.items()}
        return replace(self, verify_table=table, draft_table={r: ms * draft for r, ms in self.draft_table.items()})


@dataclass(frozen=True)
class SimConfig:
    drafters: int = 1  # 0: no drafters, plain decoding on the verifiers
    verifiers: int = 1
    sessions: int = 8  # concurrent
    tokens: int = 128  # generated per session
    total_sessions: int | None = None  # None: the S sessions start at t = 0, none after; else a closed loop
    prompt_tokens: int = 0  # > 0: a prefill pass of its own emits the first token
    seed: int = 0
    expected: bool = False  # expected tokens per round instead of sampled acceptance
    gather: bool = True
    verifier_slowdown: tuple[float, ...] = ()  # per verifier: its passes cost this many times the curve's
    drafter_slowdown: tuple[float, ...] = ()
    # () : a device per worker; else every worker shares one host, and k passes computing at once
    # each take host_slowdown[k - 1] times as long (past the table: its last step continued)
    host_slowdown: tuple[float, ...] = ()


@dataclass(frozen=True)
class FleetView:
    """What a placement function sees when a session starts."""

    drafters: int
    verifiers: int
    drafter_sessions: tuple[int, ...]  # active sessions on each
    verifier_sessions: tuple[int, ...]
    verifier_tokens: tuple[float, ...]  # tokens each verifier has emitted so far
    verifier_slowdown: tuple[float, ...]  # what each verifier's own pass times show (1: the curve's)


def round_robin(index: int, fleet: FleetView) -> tuple[int, int]:
    """Round-robin, as orchestrator/placement.py placed sessions before load-aware routing (its
    counter bumped before use)."""
    drafter = (index + 1) % fleet.drafters if fleet.drafters else -1
    return drafter, (index + 1) % fleet.verifiers


def least_loaded(index: int, fleet: FleetView) -> tuple[int, int]:
    """Load-aware: the drafter and the verifier with the fewest active sessions (lowest index on ties)."""
    drafter = min(range(fleet.drafters), key=lambda d: fleet.drafter_sessions[d]) if fleet.drafters else -1
    return drafter, min(range(fleet.verifiers), key=lambda v: fleet.verifier_sessions[v])


def predicted_pass(profile: FleetProfile, round_tokens: int = ROUND_TOKENS) -> "Placement":
    """The load-aware routing of orchestrator/placement.py: the verifier whose pass, with this
    session's round added, is predicted shortest from its own pass time (slowdown × the curve at
    n + 1 rounds of ``round_tokens``); the drafter with the fewest sessions."""
    def place(index: int, fleet: FleetView) -> tuple[int, int]:
        drafter = least_loaded(index, fleet)[0]
        cost = lambda v: fleet.verifier_slowdown[v] * profile.verify_ms(fleet.verifier_sessions[v] + 1,  # noqa: E731
                                                                        round_tokens)
        return drafter, min(range(fleet.verifiers), key=cost)

    return place


Placement = Callable[[int, FleetView], tuple[int, int]]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Mean, p50 and p99 (linear between order statistics); zeros when empty."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {"mean": round(sum(ordered) / len(ordered), 3), "p50": round(at(0.5), 3), "p99": round(at(0.99), 3)}


@dataclass
class _Session:
    index: int
    drafter: int
    verifier: int
    start: float
    first_token: float | None = None
    finish: float | None = None
    emitted: float = 0.0
    levels_left: int = 0
    k: int = 0  # this round's chain length


@dataclass
class _Worker:
    slowdown: float = 1.0
    queue: list = field(default_factory=list)
    busy: bool = False
    busy_ms: float = 0.0
    started: float = 0.0  # the pass under way began
    passes: int = 0
    rows: int = 0
    tokens: float = 0.0  # emitted through this worker (verifiers)
    out: set = field(default_factory=set)  # verifiers: last pass's sessions not back yet
    deadline: float | None = None  # verifiers: gathering until


class _Host:
    """Passes sharing one machine: with k under way, each progresses at 1 / slowdown(k) of its own
    speed; the one closest to done ends first (an event at that time; ``version`` drops stale ones)."""

    def __init__(self, fleet: "_Fleet", slowdown: tuple[float, ...]):
        self.fleet, self.slowdown = fleet, slowdown
        self.jobs: dict[int, list] = {}  # id -> [work left (ms at its own speed), event kind, arguments]
        self.at_time, self.version, self.ids = 0.0, 0, 0

    def factor(self, k: int) -> float:
        table = self.slowdown
        if k <= len(table):
            return table[k - 1] if k > 0 else 1.0
        step = table[-1] - table[-2] if len(table) > 1 else 0.0
        return table[-1] + step * (k - len(table))

    def start(self, work_ms: float, kind: str, *args) -> None:
        self._advance()
        self.ids += 1
        self.jobs[self.ids] = [work_ms, kind, args]
        self._schedule()

    def tick(self, version: int) -> None:
        if version != self.version:
            return
        self._advance()
        done = [i for i, job in self.jobs.items() if job[0] <= 1e-9]
        for i in done:
            _, kind, args = self.jobs.pop(i)
            self.fleet.at(0.0, kind, *args)
        self._schedule()

    def _advance(self) -> None:
        rate = 1.0 / self.factor(len(self.jobs)) if self.jobs else 0.0
        for job in self.jobs.values():
            job[0] -= (self.fleet.now - self.at_time) * rate
        self.at_time = self.fleet.now

    def _schedule(self) -> None:
        self.version += 1
        if self.jobs:
            left = min(job[0] for job in self.jobs.values())
            self.fleet.at(max(0.0, left) * self.factor(len(self.jobs)), "host", self.version)


class _Fleet:
    """One run: an event heap of (time, order, kind, arguments)."""

    def __init__(self, profile: FleetProfile, config: SimConfig, placement: Placement):
        self.p, self.c, self.place = profile, config, placement
        if config.verifiers < 1 or config.drafters < 0 or config.sessions < 1 or config.tokens < 1:
            raise ValueError("need at least 1 verifier, 1 session and 1 token (drafters may be 0)")
        slow = lambda factors, i: factors[i] if i < len(factors) else 1.0  # noqa: E731
        self.drafters = [_Worker(slow(config.drafter_slowdown, i)) for i in range(config.drafters)]
        self.verifiers = [_Worker(slow(config.verifier_slowdown, i)) for i in range(config.verifiers)]
        per_verifier = min(profile.max_batch, math.ceil(config.sessions / config.verifiers))
        per_drafter = min(profile.max_draft_batch, math.ceil(config.sessions / max(1, config.drafters)))
        self.k = profile.choose_chain(per_verifier, per_drafter) if config.drafters else 0
        self.mix = profile.chain_mix if config.drafters else ()
        self.k_rng = random.Random(config.seed + 1)  # the mix's draws, apart from acceptance's
        self.rng = random.Random(config.seed)
        self.heap: list = []
        self.order = 0
        self.now = 0.0
        self.sessions: list[_Session] = []
        self.rounds = self.accepted = 0.0
        self.host = _Host(self, config.host_slowdown) if config.host_slowdown else None

    def compute(self, ms: float, kind: str, *args) -> None:
        """A pass of ``ms`` (its own cost) that ends with event ``kind``: on its worker's own device,
        or on the shared host."""
        if self.host is None:
            self.at(ms, kind, *args)
        else:
            self.host.start(ms, kind, *args)

    def at(self, delay: float, kind: str, *args) -> None:
        self.order += 1
        heapq.heappush(self.heap, (self.now + delay, self.order, kind, args))

    def run(self) -> None:
        first = self.c.sessions if self.c.total_sessions is None else min(self.c.sessions, self.c.total_sessions)
        for _ in range(first):
            self.at(0.0, "start")
        handlers = {"start": self.start, "draft": self.draft_arrive, "drafted": self.draft_done,
                    "verify": self.verify_arrive, "verified": self.pass_done, "verdict": self.verdict,
                    "gather": self.try_pass, "draft_try": self.draft_pass, "computed": self.computed,
                    "host": lambda version: self.host.tick(version)}
        while self.heap:
            self.now, _, kind, args = heapq.heappop(self.heap)
            handlers[kind](*args)

    def view(self) -> FleetView:
        active = [s for s in self.sessions if s.finish is None]
        return FleetView(len(self.drafters), len(self.verifiers),
                         tuple(sum(s.drafter == d for s in active) for d in range(len(self.drafters))),
                         tuple(sum(s.verifier == v for s in active) for v in range(len(self.verifiers))),
                         tuple(w.tokens for w in self.verifiers), tuple(w.slowdown for w in self.verifiers))

    def start(self) -> None:
        drafter, verifier = self.place(len(self.sessions), self.view())
        session = _Session(len(self.sessions), drafter if self.drafters else -1, verifier, self.now)
        self.sessions.append(session)
        if self.c.prompt_tokens > 0:
            self.at(self.p.link_ms, "verify", session.verifier, (session.index, self.c.prompt_tokens, "prefill"))
        else:
            self.begin_round(session)

    def begin_round(self, session: _Session) -> None:
        wait = self.p.overhead_ms
        session.k = self.round_k()
        if session.k > 0:
            session.levels_left = session.k
            self.at(wait + self.p.link_ms, "draft", session.index)
        else:
            self.at(wait + self.p.link_ms, "verify", session.verifier, (session.index, 1, "plain"))

    # Drafters: one level pass at a time over every session waiting for a level.
    def draft_arrive(self, index: int) -> None:
        """Queue for a level; the pass starts after every arrival of this instant (an event later)."""
        d = self.sessions[index].drafter
        self.drafters[d].queue.append(index)
        self.at(0.0, "draft_try", d)

    def draft_pass(self, d: int) -> None:
        drafter = self.drafters[d]
        if drafter.busy or not drafter.queue:
            return
        batch, drafter.queue = drafter.queue[:self.p.max_draft_batch], drafter.queue[self.p.max_draft_batch:]
        drafter.busy, drafter.started = True, self.now
        drafter.passes, drafter.rows = drafter.passes + 1, drafter.rows + len(batch)
        self.compute(self.p.draft_ms(len(batch)) * drafter.slowdown, "drafted", d, batch)

    def draft_done(self, d: int, batch: list[int]) -> None:
        self.drafters[d].busy_ms += self.now - self.drafters[d].started
        for index in batch:
            session = self.sessions[index]
            session.levels_left -= 1
            if session.levels_left > 0:
                self.drafters[d].queue.append(index)
            else:
                self.at(self.p.link_ms, "verify", session.verifier, (index, session.k + 1, "spec"))
        self.drafters[d].busy = False
        if self.drafters[d].queue:
            self.draft_pass(d)

    # Verifiers: continuous batching, one pass at a time.
    def verify_arrive(self, v: int, job: tuple) -> None:
        verifier = self.verifiers[v]
        verifier.queue.append(job)
        verifier.out.discard(job[0])
        self.at(0.0, "gather", v)  # after every arrival of this instant

    def try_pass(self, v: int) -> None:
        verifier = self.verifiers[v]
        if verifier.busy or not verifier.queue:
            return
        waiting_for = {i for i in verifier.out if self.sessions[i].finish is None}
        if self.c.gather and waiting_for and len(verifier.queue) < self.p.max_batch:
            if verifier.deadline is None:
                last = verifier.busy_ms / max(1, verifier.passes)
                verifier.deadline = self.now + GATHER_FRACTION * last
                self.at(GATHER_FRACTION * last, "gather", v)
            if self.now < verifier.deadline:
                return
        self.verify_pass(v)

    def verify_pass(self, v: int) -> None:
        verifier = self.verifiers[v]
        if verifier.queue[0][2] == "prefill":  # a long feed runs alone
            batch = [verifier.queue[0]]
        else:
            batch = [job for job in verifier.queue if job[2] != "prefill"][:self.p.max_batch]
        for job in batch:
            verifier.queue.remove(job)
        ms = self.p.verify_ms(len(batch), max(job[1] for job in batch)) * verifier.slowdown
        verifier.busy, verifier.deadline, verifier.started = True, None, self.now
        verifier.passes, verifier.rows = verifier.passes + 1, verifier.rows + len(batch)
        self.compute(ms, "computed", v, batch)

    def computed(self, v: int, batch: list[tuple]) -> None:
        """A verify pass computed: it ends now, or when its ``min_verify_ms`` is up."""
        self.at(max(0.0, self.verifiers[v].started + self.p.min_verify_ms - self.now), "verified", v, batch)

    def pass_done(self, v: int, batch: list[tuple]) -> None:
        verifier = self.verifiers[v]
        verifier.busy, verifier.busy_ms = False, verifier.busy_ms + self.now - verifier.started
        verifier.out = {job[0] for job in batch}
        for job in batch:
            hops = SPEC_HOPS - 2 if job[2] == "spec" else PLAIN_HOPS - 1
            self.at(hops * self.p.link_ms, "verdict", job)
        self.try_pass(v)

    def round_k(self) -> int:
        """This round's chain length: K, or a draw from the measured mix."""
        if not self.mix:
            return self.k
        draw, total = self.k_rng.random() * sum(share for _, share in self.mix), 0.0
        for k, share in self.mix:
            total += share
            if draw < total:
                return k
        return self.mix[-1][0]

    def emitted(self, kind: str, k: int) -> float:
        if kind == "prefill":
            return 1.0
        self.rounds += 1
        k = k if kind == "spec" else 0
        if self.c.expected:
            accepted = self.p.expected_tokens(k) - 1.0
        else:
            accepted = 0
            while accepted < k and self.rng.random() < (self.p.acceptance[accepted]
                                                         if accepted < len(self.p.acceptance) else 0.0):
                accepted += 1
        self.accepted += accepted
        return 1.0 + accepted

    def verdict(self, job: tuple) -> None:
        session = self.sessions[job[0]]
        tokens = min(self.emitted(job[2], session.k), self.c.tokens - session.emitted)
        session.emitted += tokens
        self.verifiers[session.verifier].tokens += tokens
        if session.first_token is None:
            session.first_token = self.now
        if session.emitted < self.c.tokens - 1e-9:
            self.begin_round(session)
            return
        session.finish = self.now
        if self.c.total_sessions is not None and len(self.sessions) < self.c.total_sessions:
            self.at(0.0, "start")
        self.try_pass(session.verifier)  # it may have been waiting for this session

    def result(self) -> dict:
        makespan = max(s.finish for s in self.sessions)
        total = sum(s.emitted for s in self.sessions)
        tpot = [(s.finish - s.first_token) / (s.emitted - 1) for s in self.sessions if s.emitted > 1]
        util = lambda pool: [round(w.busy_ms / makespan, 4) if makespan else 0.0 for w in pool]  # noqa: E731
        mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else 0.0  # noqa: E731
        passes = sum(w.passes for w in self.verifiers)
        return {
            "drafters": len(self.drafters), "verifiers": len(self.verifiers), "sessions": self.c.sessions,
            "total_sessions": len(self.sessions), "tokens_per_session": self.c.tokens,
            "chain_length": round(sum(k * share for k, share in self.mix) / sum(share for _, share in self.mix), 3)
            if self.mix else self.k,
            "tokens_per_s": round(1000.0 * total / makespan, 3) if makespan else 0.0,
            "makespan_ms": round(makespan, 3),
            "ttft_ms": percentiles([s.first_token - s.start for s in self.sessions]),
            "tpot_ms": percentiles(tpot),
            "verifier_share": [round(w.tokens / total, 4) for w in self.verifiers],
            "utilisation": {"drafters": util(self.drafters), "verifiers": util(self.verifiers),
                            "drafter_mean": mean(util(self.drafters)), "verifier_mean": mean(util(self.verifiers))},
            "rounds": int(self.rounds), "verify_passes": passes,
            "rows_per_pass": round(sum(w.rows for w in self.verifiers) / max(1, passes), 3),
            "tokens_per_round": round(self.accepted / max(1, self.rounds) + 1.0, 4),
        }


def simulate(profile: FleetProfile, config: SimConfig, placement: Placement | None = None) -> dict:
    """One run of the fleet: the result's fields are listed in ``RESULT_FIELDS``."""
    fleet = _Fleet(profile, config, placement or round_robin)
    fleet.run()
    return fleet.result()


RESULT_FIELDS = ("drafters", "verifiers", "sessions", "total_sessions", "tokens_per_session", "chain_length",
                 "tokens_per_s", "makespan_ms", "ttft_ms", "tpot_ms", "verifier_share", "utilisation", "rounds",
                 "verify_passes", "rows_per_pass", "tokens_per_round")


def predict_small_fleets(profile: FleetProfile, sessions: int = 8, tokens: int = 128, seed: int = 0,
                         host_slowdown: tuple[float, ...] = ()) -> dict:
    """Predictions for 1×1, 2×1, 1×2 and 2×2 (drafters × verifiers) at ``sessions`` sessions: what
    real runs of those fleets are to be checked against."""
    return {f"{n}x{m}": simulate(profile, SimConfig(drafters=n, verifiers=m, sessions=sessions, tokens=tokens,
                                                    seed=seed, host_slowdown=host_slowdown))
            for n, m in ((1, 1), (2, 1), (1, 2), (2, 2))}


def recommend(profile: FleetProfile, budgets: Sequence[float], drafter_cost: float = 1.0,
              verifier_cost: float = 1.0, sessions_per_unit: float = 8.0, tokens: int = 64,
              max_drafters: int = 16, tpot_slo_ms: float | None = None, seed: int = 0) -> list[dict]:
    """For each budget (in the costs' units: a number of GPUs when both cost 1, or $/h), every
    fleet of N ≥ 0 drafters and M ≥ 1 verifiers it pays for (N ≤ the sessions and
    ``max_drafters``), each loaded with round(sessions_per_unit × budget) sessions. ``best``
    (and ``ratio``, N:M): the most tokens/s for the money (the budget is fixed, so the best
    goodput per cost; ties: the cheaper fleet), among those meeting ``tpot_slo_ms`` (p50) when
    given; ``best_per_cost``: the most tokens/s per unit actually spent; ``sweep``: every fleet."""
    out = []
    for budget in budgets:
        sessions = max(1, round(sessions_per_unit * budget))
        rows = []
        for m in range(1, int(budget / verifier_cost + 1e-9) + 1):
            spare = budget - m * verifier_cost
            top = min(sessions, max_drafters, int(spare / drafter_cost + 1e-9) if drafter_cost > 0 else max_drafters)
            for n in range(0, max(0, top) + 1):
                r = simulate(profile, SimConfig(drafters=n, verifiers=m, sessions=sessions, tokens=tokens, seed=seed))
                cost = n * drafter_cost + m * verifier_cost
                rows.append({"drafters": n, "verifiers": m, "cost": round(cost, 4), "tokens_per_s": r["tokens_per_s"],
                             "tokens_per_s_per_cost": round(r["tokens_per_s"] / cost, 4),
                             "tpot_p50_ms": r["tpot_ms"]["p50"], "chain_length": r["chain_length"]})
        ok = [r for r in rows if tpot_slo_ms is None or r["tpot_p50_ms"] <= tpot_slo_ms] or rows
        best = max(ok, key=lambda r: (r["tokens_per_s"], -r["cost"]))
        out.append({"budget": round(budget, 4), "sessions": sessions,
                    "ratio": f"{best['drafters']}:{best['verifiers']}", "best": best,
                    "best_per_cost": max(ok, key=lambda r: r["tokens_per_s_per_cost"]), "sweep": rows})
    return out


# GPUs of the k8s overlays: HBM bandwidth (GB/s, the vendors' spec sheets) and an illustrative
# price ($ per GPU-hour, roughly cloud on-demand list prices; override them for real decisions).
@dataclass(frozen=True)
class GpuSpec:
    bandwidth_gbs: float
    cost: float


GPUS = {
    "NVIDIA-H100-80GB-HBM3": GpuSpec(3350.0, 12.3),
    "NVIDIA-A100-SXM4-80GB": GpuSpec(2039.0, 5.1),
    "NVIDIA-A10G": GpuSpec(600.0, 1.0),
    "NVIDIA-L4": GpuSpec(300.0, 0.8),
}
# Each overlay's (drafter, verifier) products, as in k8s/overlays/*/{drafter,verifier}-gpu.yaml
# (``overlay_gpus`` reads them when the manifests are there); "cpu": the curve's own machine.
OVERLAYS = {"dev": ("cpu", "cpu"), "a10g-a100": ("NVIDIA-A10G", "NVIDIA-A100-SXM4-80GB"),
            "l4-h100": ("NVIDIA-L4", "NVIDIA-H100-80GB-HBM3")}


def on_gpus(profile: FleetProfile, drafter_gpu: str, verifier_gpu: str) -> tuple[FleetProfile, float, float]:
    """The profile moved to a GPU pair by bandwidth (the reference: ``meta['reference_bandwidth_gbs']``,
    the machine the curve was measured on), and the pair's costs; "cpu" stays as measured, cost 1."""
    reference = profile.meta.get("reference_bandwidth_gbs")

    def factor(gpu: str) -> tuple[float, float]:
        if gpu == "cpu" or gpu not in GPUS or not reference:
            return 1.0, GPUS[gpu].cost if gpu in GPUS else 1.0
        return reference / GPUS[gpu].bandwidth_gbs, GPUS[gpu].cost

    (draft_x, draft_cost), (verify_x, verify_cost) = factor(drafter_gpu), factor(verifier_gpu)
    return profile.scaled(verify=verify_x, draft=draft_x), draft_cost, verify_cost


def recommend_overlays(profile: FleetProfile, overlays: dict[str, tuple[str, str]] | None = None,
                       pairs: Sequence[int] = (1, 2, 4), tokens: int = 64) -> dict:
    """Per overlay: the recommended drafter:verifier ratio for budgets of the price of 1, 2 and 4
    drafter + verifier pairs (spent on any mix), with 8 sessions per pair's worth of money."""
    out = {}
    for name, (drafter_gpu, verifier_gpu) in (overlays or OVERLAYS).items():
        moved, draft_cost, verify_cost = on_gpus(profile, drafter_gpu, verifier_gpu)
        pair = draft_cost + verify_cost
        picks = recommend(moved, [b * pair for b in pairs], draft_cost, verify_cost, sessions_per_unit=8.0 / pair,
                          tokens=tokens)
        out[name] = {"drafter_gpu": drafter_gpu, "verifier_gpu": verifier_gpu, "drafter_cost": draft_cost,
                     "verifier_cost": verify_cost,
                     "budgets": [{k: v for k, v in p.items() if k != "sweep"} for p in picks]}
    return out


# Loaders (I/O): cost curves, calibration profiles, a shipped draft's acceptance, the overlays.
def _rows_table(node) -> dict[int, dict[int, float]] | None:
    """A {rows: {tokens: ms}} table of numbers, or None."""
    try:
        table = {int(r): {int(t): float(ms) for t, ms in curve.items()} for r, curve in node.items()}
    except (AttributeError, TypeError, ValueError):
        return None
    return table if table and all(table.values()) else None


def read_cost_curve(path: str | Path, shape: str | None = None) -> tuple[dict[int, dict[int, float]], dict]:
    """A cost-curve file's {rows: {tokens: ms}} for ``shape`` (default: the first) and its meta:
    docs/bench/cpu-cost-runner.json (cost.shapes.<shape>.passes_ms) or gpu-cost-*.json (<shape>)."""
    data = json.loads(Path(path).read_text())
    shapes = data.get("cost", {}).get("shapes") or {k: v for k, v in data.items() if isinstance(v, dict)}
    names = [shape] if shape else list(shapes)
    for name in names:
        node = shapes.get(name)
        table = _rows_table(node.get("passes_ms", node)) if isinstance(node, dict) else None
        if table:
            bandwidth = data.get("cost", {}).get("copy_bandwidth_gbs") or _device_bandwidth(data.get("device", ""))
            return table, {"cost_curve": str(path), "shape": name, "device": data.get("device"),
                           "reference_bandwidth_gbs": bandwidth}
    raise ValueError(f"{path}: no rows × tokens cost table" + (f" for shape {shape}" if shape else ""))


def _device_bandwidth(device: str) -> float | None:
    key = re.sub(r"\s+", "-", device.strip())
    return GPUS[key].bandwidth_gbs if key in GPUS else None


def read_calibration(path: str | Path) -> dict:
    """A ``specgrove calibrate`` profile as FleetProfile fields: its 1-token-row verify curve, its
    draft level, its network time (a round's hops, spread over them) and its greedy acceptance
    (Sequoia's positional a_1 is a chain's acceptance at every depth)."""
    data = json.loads(Path(path).read_text())
    greedy = data.get("acceptance", {}).get("greedy") or []
    fields = {"verify_table": {1: {int(k): float(v) for k, v in data["verify_ms"].items()}},
              "draft_table": {1: float(data["draft_level_ms"])},
              "link_ms": float(data.get("network_ms", 0.0)) / SPEC_HOPS,
              "meta": {"profile": str(path), **data.get("meta", {})}}
    if greedy:
        fields["acceptance"] = (float(greedy[0]),) * 8
    return fields


def shipped_acceptance(name: str) -> tuple[float, ...] | None:
    """A shipped draft's per-depth acceptance: its training's last top-1 agreement per unrolled
    step (specgrove/data/draft/<name>/training.json), None when it has none."""
    path = Path(__file__).resolve().parent.parent / "specgrove" / "data" / "draft" / name / "training.json"
    if not path.is_file():
        return None
    history = json.loads(path.read_text()).get("history") or [{}]
    steps = history[-1].get("top1_per_step")
    return tuple(float(a) for a in steps) if steps else None


def overlay_gpus(root: str | Path | None = None) -> dict[str, tuple[str, str]]:
    """Each k8s overlay's (drafter, verifier) GPU products from its manifests ("cpu" without one);
    the built-in ``OVERLAYS`` when the manifests are not there (an installed package)."""
    base = Path(root) if root else Path(__file__).resolve().parent.parent / "k8s" / "overlays"
    if not base.is_dir():
        return dict(OVERLAYS)
    product = re.compile(r"gpu\.product.*values:\s*\[\s*\"([^\"]+)\"")

    def read(path: Path) -> str:
        match = product.search(path.read_text()) if path.is_file() else None
        return match.group(1) if match else "cpu"

    return {d.name: (read(d / "drafter-gpu.yaml"), read(d / "verifier-gpu.yaml"))
            for d in sorted(base.iterdir()) if d.is_dir()}


def profile_dict(profile: FleetProfile) -> dict:
    data = asdict(profile)
    data["verify_table"] = {str(r): {str(t): ms for t, ms in c.items()} for r, c in profile.verify_table.items()}
    data["draft_table"] = {str(r): ms for r, ms in profile.draft_table.items()}
    return data
