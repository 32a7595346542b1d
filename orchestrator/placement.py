"""Where a session's rounds run: the workers behind each role's name, which of them are live and
how loaded, one channel per worker, and the pair a new session is placed on.

**Discovery.** A role is named once, by one or more specs, each re-read every ``resolve_s``:
- ``HOST:PORT``: one worker;
- ``dns:///HOST:PORT``: every address HOST resolves to (a Kubernetes headless Service: one per
  ready pod), so pods that come and go are seen without a restart;
- ``ipv4:A:P,B:P``: the addresses listed (gRPC's notation);
- ``file:PATH``: the ``HOST:PORT`` lines of a file (comments with ``#``).
Each worker gets a channel of its own (one channel per Service would pin every session to one
pod: gRPC keeps one HTTP/2 connection per channel).

**Routing.** Every worker reports its load when polled (``Info``: sessions, rounds waiting, KV
tokens against its budget, its pass time, draining; a drafter also its link to each verifier it
has sent rounds to), and each poll times this orchestrator's round trip to it. A new session goes
to the drafter and verifier pair where its round is predicted shortest, so where it gets the most
tokens per second (the draft and the acceptance are the same on every pair):

    round = RTT(here, drafter) + link(drafter, verifier) + DRAFT_LEVELS · draft pass
            + pass_1 × ratio((n + 1) · ROUND_TOKENS)

(pass_1: the verifier's own 1-token pass, ratio: the verify-cost curve the planner uses, n: the
sessions it holds; without drafters, RTT(here, verifier) + that pass). Round trips and links are
the least of the recent ones (queueing only adds to them); a drafter that has not sent a round to
a verifier yet is assumed as near to it as this orchestrator is, and one in the verifier's own
process (``serve worker``: the same ``WorkerInfo.instance``) at no distance. Pairs within ``NEAR`` of the best
are equals, and the one with the fewest sessions wins (noise in the measurements must not pile
sessions on one worker). Verifiers draining, down, full or past their KV budget take none while
another can. A session keeps its verifier while it lives (the verifier holds its KV cache); it
moves only when its verifier fails, drains, leaves the pool or is past its KV budget
(``should_move``), to the verifier best for its drafter.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from orchestrator.round_planner import PRIOR_VERIFY_RATIO
from orchestrator.tree_sizing import CostProfile
from specgrove.config import MAX_BATCH, ROUND_TOKENS
from specgrove.errors import Unavailable
from specgrove.round import RecentMin
from specgrove.tls import TlsConfig, open_channel
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc

CHANNEL_OPTIONS = [  # reconnect quickly to a restarted worker (gRPC's default backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_CURVE = CostProfile(PRIOR_VERIFY_RATIO, 0.0)
DRAFT_LEVELS = ROUND_TOKENS - 1  # the draft levels a new session's round is assumed to draw
NEAR = (0.05, 1.0)  # pairs predicted within 5% + 1 ms of the best round are equals


@dataclass
class Placement:
    """The workers a session's rounds run on; either moves when it fails or drains."""

    drafter: str  # "" when no drafter is deployed (plain decoding)
    verifier: str


def resolve_host(host: str, port: str) -> list[str]:
    """Every address ``host`` resolves to, as ``ADDR:PORT`` (IPv6 in brackets), in a stable order."""
    found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = {info[4][0] for info in found}
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in sorted(addresses)]


def expand(spec: str, resolve=resolve_host) -> list[tuple[str, str | None]]:
    """The workers a spec names: (address, the host name it was resolved from, or None)."""
    spec = spec.strip()
    if spec.startswith("dns:"):
        target = spec.split("///", 1)[1] if "///" in spec else spec[len("dns:"):]
        host, _, port = target.rpartition(":")
        try:
            return [(address, host) for address in resolve(host, port)]
        except OSError:  # not resolvable now (no ready pod): none, until the next look
            return []
    if spec.startswith("ipv4:"):
        return [(a.strip(), None) for a in spec[len("ipv4:"):].split(",") if a.strip()]
    if spec.startswith("file:"):
        try:
            lines = Path(spec[len("file:"):]).read_text().splitlines()
        except OSError:
            return []
        return [(line.split("#")[0].strip(), None) for line in lines if line.split("#")[0].strip()]
    return [(spec, None)] if spec else []


def sessions_past_budget(kv_tokens: int, max_kv_tokens: int, sessions: int) -> int:
    """How many sessions of average size must leave a verifier for its cache to fit its budget
    (0: no budget, or within it)."""
    if not max_kv_tokens or kv_tokens <= max_kv_tokens or not sessions:
        return 0
    return min(sessions, math.ceil((kv_tokens - max_kv_tokens) / (kv_tokens / sessions)))


class Pool:
    """One role's workers, as its specs name them now (looked up again every ``resolve_s``)."""

    def __init__(self, specs: tuple[str, ...], resolve_s: float = 5.0, resolve=resolve_host):
        self.specs, self.resolve_s, self._resolve = tuple(specs), resolve_s, resolve
        self.hosts: dict[str, str | None] = {}  # address -> the name it came from (TLS checks that name)
        self._at = float("-inf")
        self.addresses()

    def addresses(self) -> tuple[str, ...]:
        if time.monotonic() - self._at >= self.resolve_s:
            found = [pair for spec in self.specs for pair in expand(spec, self._resolve)]
            if found or not self.hosts:  # a failed look keeps the last answer
                self.hosts = dict(found)
            self._at = time.monotonic()
        return tuple(self.hosts)


@dataclass
class WorkerState:
    """A worker's load as it last reported it, and the sessions this orchestrator placed there."""

    sessions: int = 0
    max_sessions: int = 0
    waiting: int = 0
    kv_tokens: int = 0
    max_kv_tokens: int = 0
    pass_ms: float = 0.0  # a verifier's pass
    tokens_per_pass: float = 1.0
    draft_pass_ms: float = 0.0  # a drafter's level pass
    min_pass_rows: int = 1  # a verifier feeds passes of 2 .. this − 1 tokens as this many
    instance: str = ""  # the worker process: a drafter and a verifier sharing one verify in process
    draining: bool = False
    polled_at: float = float("-inf")
    placed: set[str] = field(default_factory=set)  # this orchestrator's sessions here
    over_budget: int = 0  # sessions to move off it to fit its KV budget (set at each poll)
    rtt: RecentMin = field(default_factory=RecentMin)  # this orchestrator's Info calls to it
    links: dict[str, float] = field(default_factory=dict)  # drafters: verifier -> its link there (ms)

    @property
    def full(self) -> bool:
        over_kv = self.max_kv_tokens and self.kv_tokens >= self.max_kv_tokens
        return bool(over_kv) or bool(self.max_sessions and self.sessions >= self.max_sessions)

    def pass_1_ms(self) -> float | None:
        """Its 1-token pass, from its recent passes (None: never measured)."""
        return self.pass_ms / _CURVE.verify_time(max(1.0, self.tokens_per_pass)) if self.pass_ms > 0 else None

    @property
    def held(self) -> int:
        """Its sessions: as it reported them, or as placed here since, whichever is more."""
        return max(self.sessions, len(self.placed))

    def predicted_ms(self, pass_1: float) -> float:
        """Its pass with one more session's round in it."""
        return pass_1 * _CURVE.verify_time((self.held + 1) * ROUND_TOKENS)

    def draft_ms(self) -> float:
        """A drafter's levels of a round with one more session (one pass per MAX_BATCH sessions)."""
        return DRAFT_LEVELS * self.draft_pass_ms * math.ceil((self.held + 1) / MAX_BATCH)


class Workers:
    """The drafters and verifiers of one orchestrator: their pools, liveness, load and channels."""

    def __init__(self, drafters: tuple[str, ...], verifiers: tuple[str, ...], retry_s: float,
                 tls: TlsConfig | None = None, resolve_s: float = 5.0, poll_s: float = 1.0):
        self.drafter_pool, self.verifier_pool = Pool(drafters, resolve_s), Pool(verifiers, resolve_s)
        self.retry_s = retry_s  # how long a failed worker is skipped
        self.tls, self.poll_s = tls, poll_s
        self.auth: list = []  # metadata of the load polls (the pipeline sets its bearer token)
        self.state: dict[str, WorkerState] = {}
        self._down_until: dict[str, float] = {}  # worker address -> skipped until (it failed)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._polling: asyncio.Future | None = None

    @property
    def drafters(self) -> tuple[str, ...]:
        return self.drafter_pool.addresses()

    @property
    def verifiers(self) -> tuple[str, ...]:
        return self.verifier_pool.addresses()

    def load(self, address: str) -> WorkerState:
        return self.state.setdefault(address, WorkerState())

    # ------------------------------------------------------------------ placing sessions

    def place(self, session_id: str, prefer: str | None = None) -> Placement:
        """The pair a new session runs on (``prefer``: a resumed session's verifier, which may
        still hold its cache, when it can take it)."""
        drafters = [d for d in self.drafters if self.live(d) and not self.load(d).draining] or list(self.drafters)
        verifiers = self._verifiers()
        if prefer in verifiers:
            verifiers = [prefer]
        drafter, verifier = self._best([(d, v) for d in drafters or [""] for v in verifiers])
        place = Placement(drafter, verifier)
        self.assign(session_id, place)
        return place

    def best_verifier(self, prefer: str | None = None, exclude: str | None = None, drafter: str = "") -> str:
        """The verifier a session of ``drafter`` gets the most tokens per second on (see the
        module docstring); ``exclude``: the one it leaves, kept only when no other can take it."""
        candidates = self._verifiers(exclude)
        if prefer in candidates:
            return prefer
        return self._best([(drafter, v) for v in candidates])[1]

    def _verifiers(self, exclude: str | None = None) -> list[str]:
        """The verifiers that may take a session: live, not draining, not full, not ``exclude``;
        failing those, ``exclude`` when it still can, else any live one, else any."""
        pool = list(self.verifiers)
        if not pool:
            raise Unavailable(f"no verifier is reachable behind {', '.join(self.verifier_pool.specs)}")
        others = [v for v in pool if v != exclude]
        able = [v for v in others if self.live(v) and not self.load(v).draining and not self.load(v).full]
        if not able and exclude in pool and self.live(exclude) and not self.load(exclude).draining:
            return [exclude]  # nothing else can take the session: it stays
        return able or [v for v in others if self.live(v)] or others or pool

    def round_ms(self, drafter: str, verifier: str, unknown_pass_1: float = 1.0) -> float:
        """A new session's round on this pair, predicted (module docstring); ``unknown_pass_1``:
        the 1-token pass of a verifier that has not reported one."""
        v = self.load(verifier)
        verify = v.predicted_ms(v.pass_1_ms() or unknown_pass_1)
        if not drafter:
            return (v.rtt.ms or 0.0) + verify
        d = self.load(drafter)
        link = 0.0 if d.instance and d.instance == v.instance else d.links.get(verifier, v.rtt.ms or 0.0)
        return (d.rtt.ms or 0.0) + link + d.draft_ms() + verify

    def _best(self, pairs: list[tuple[str, str]]) -> tuple[str, str]:
        """The pair with the shortest predicted round; among those near it, the fewest sessions."""
        known = [p for p in (self.load(v).pass_1_ms() for _, v in pairs) if p is not None]
        unknown = min(known) if known else 1.0  # a verifier not measured yet is tried as the fastest known
        cost = {pair: self.round_ms(*pair, unknown) for pair in pairs}
        best = min(cost.values())
        near = [pair for pair in pairs if cost[pair] <= best * (1 + NEAR[0]) + NEAR[1]]
        return min(near, key=lambda p: (self.load(p[1]).held, self.load(p[0]).held if p[0] else 0, cost[p], p))

    def assign(self, session_id: str, place: Placement) -> None:
        for address in (place.drafter, place.verifier):
            if address:
                self.load(address).placed.add(session_id)

    def unassign(self, session_id: str, *addresses: str) -> None:
        for address in addresses:
            if address:
                self.load(address).placed.discard(session_id)

    def should_move(self, verifier: str) -> bool:
        """A session leaves its verifier only when it failed, drains, left the pool, or is past its
        KV budget: then as many of its sessions as it takes to fit move, each claiming one move
        (``WorkerState.over_budget``), so that they do not all leave at once."""
        if not self.live(verifier) or self.load(verifier).draining or verifier not in self.verifiers:
            return True
        state = self.load(verifier)
        if state.over_budget > 0:
            state.over_budget -= 1
            return True
        return False

    # ------------------------------------------------------------------ liveness and load

    def live(self, address: str) -> bool:
        return time.monotonic() >= self._down_until.get(address, 0)

    def mark_down(self, address: str) -> None:
        self._down_until[address] = time.monotonic() + self.retry_s

    def next_live(self, pool: tuple[str, ...], current: str) -> str:
        """The next worker after ``current`` in ``pool`` that is not marked down (the next one
        when all are)."""
        if not pool:
            return current
        start = pool.index(current) if current in pool else -1
        ordered = [pool[(start + i) % len(pool)] for i in range(1, len(pool) + 1)]
        return next((a for a in ordered if self.live(a) and not self.load(a).draining), ordered[0])

    async def refresh(self, wait: bool = False) -> None:
        """Poll the workers' load when it is older than ``poll_s`` (one poll at a time, shared by
        every caller); ``wait``: until it is in (placing a session), else in the background."""
        if self._polling is None or self._polling.done():
            now = time.monotonic()
            stale = [a for a in (*self.verifiers, *self.drafters) if now - self.load(a).polled_at >= self.poll_s]
            if not stale:
                return
            self._polling = asyncio.ensure_future(asyncio.gather(*(self._poll(a) for a in stale)))
        if wait:
            await asyncio.shield(self._polling)

    async def _poll(self, address: str) -> None:
        """Ask the worker at ``address`` for its load: as a verifier, as a drafter, or as both
        (``serve worker``: one process, one state; its verifier's sessions and KV, its
        drafter's draft pass and links)."""
        state = self.load(address)
        first = state.polled_at == float("-inf")
        try:
            if address in self.verifier_pool.hosts:
                await self._ask(address, speculate_pb2_grpc.VerifierStub, first, verifier=True)
            if address in self.drafter_pool.hosts:
                await self._ask(address, speculate_pb2_grpc.DrafterStub, first, verifier=False)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                self.mark_down(address)
        finally:
            state.polled_at = time.monotonic()

    async def _ask(self, address: str, stub_class, first: bool, verifier: bool) -> None:
        state, t0 = self.load(address), time.perf_counter()
        info = await stub_class(self.channel(address)).Info(speculate_pb2.InfoRequest(), timeout=5.0,
                                                             metadata=self.auth)
        if not first:  # a verifier's first answer waits for its warm-up pass
            state.rtt.add((time.perf_counter() - t0) * 1000)
        load, state.instance = info.load, info.instance
        if verifier:
            state.pass_ms, state.tokens_per_pass = load.pass_ms, load.tokens_per_pass or 1.0
            state.min_pass_rows = info.min_pass_rows or 1
            state.over_budget = sessions_past_budget(load.kv_tokens, load.max_kv_tokens, load.sessions)
        else:
            state.draft_pass_ms, state.links = load.pass_ms, dict(load.link_ms)
        if verifier or address not in self.verifier_pool.hosts:  # a worker's verifier speaks for its sessions
            state.sessions, state.max_sessions, state.waiting = load.sessions, load.max_sessions, load.waiting
            state.kv_tokens, state.max_kv_tokens, state.draining = load.kv_tokens, load.max_kv_tokens, load.draining

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            host = self.verifier_pool.hosts.get(address) or self.drafter_pool.hosts.get(address)
            self._channels[address] = open_channel(address, self.tls, CHANNEL_OPTIONS, aio=True, name=host)
        return self._channels[address]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
