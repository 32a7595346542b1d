"""Steps ahead: the verifier runs a session's next plain (K = 0) steps as soon as it holds this
step's verdict, the draft-ahead of plain decoding (drafter/ahead.py is the drafted rounds').

A plain step's verdict leaves the next step's context known exactly (this context plus the token
it emitted). With the orchestrator's permission (``Decode``'s ``ahead_room``: tokens the session
may still emit) the verifier verifies that step at once, and the one after it when that one is
done, up to ``STEPS_AHEAD`` steps past the last one asked for, while the verdicts travel to the
orchestrator, are committed to Redis and streamed to the client. The orchestrator's requests find
their steps verified or in a pass: its hops and commits overlap the passes instead of preceding
them, and the next steps are queued for the next batched pass whenever the orchestrator answers
(one step ahead, a session whose request came late missed the pass and split the batch). Each
reply says how many steps are under way (``Timing.steps_ahead``); the orchestrator collects them in
order before any other round. Exactness is untouched: a step run ahead is the very round asked
for (same session, run, step, context, sampling and seed; its random draws are keyed by (seed,
step)); a request that differs in anything is verified afresh. Steps run ahead past the session's
end (EOS, a stop string) are wasted, at most ``STEPS_AHEAD`` per request.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from opentelemetry import context as otel_context

from specgrove import telemetry
from specgrove.config import STEPS_AHEAD
from specgrove.round import Round, Verdict
from verifier.worker import VerifierWorker, empty_tree

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    round: Round
    started: float
    future: Future | None = None
    finished: float | None = None
    verdict: Verdict | None = None  # set with the lock held, as the step after it is started


@dataclass
class _Session:
    steps: deque = field(default_factory=deque)  # the steps under way, in order
    room: int = 0  # tokens the session may emit past the last step asked for


@dataclass(frozen=True)
class Stepped:
    """A plain step's verdict; whether it ran ahead (with how much of it had run before the
    request arrived: the time it saved); the session's steps now under way after it."""

    verdict: Verdict
    ahead: bool = False
    overlap_ms: float = 0.0
    steps_ahead: int = 0


class StepsAhead:
    """The plain steps a verifier runs ahead, up to ``depth`` per session; the worker's metrics
    count their outcomes (``verify_ahead_steps``: hit, miss, unused)."""

    def __init__(self, worker: VerifierWorker, depth: int = STEPS_AHEAD):
        self.worker, self.depth = worker, depth
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently asked first
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, worker.max_sessions), thread_name_prefix="step-ahead")

    def decode(self, r: Round, ahead_room: int = 0) -> Stepped:
        """The plain step ``r``: taken from the steps run ahead when it is the next of them, else
        verified now; then, with ``ahead_room`` tokens left to emit, this step's included, the
        next ones started (up to ``depth`` past this one)."""
        arrived = time.perf_counter()
        stepped = self._take(r, arrived)
        if stepped is None:
            stepped = Stepped(self.worker.verify(r, empty_tree()))
        emitted = [*stepped.verdict.result.accepted_tokens, stepped.verdict.result.next_token]
        with self._lock:
            session = self._sessions.pop(r.session_id, None) or _Session()
            self._sessions[r.session_id] = session
            while len(self._sessions) > self.worker.max_sessions:  # sessions never released (their
                self._forget(*self._sessions.popitem(last=False))  # orchestrator died): the oldest go
            session.room = max(0, ahead_room - len(emitted))
            if not session.steps:
                self._extend(session, r.following(emitted))
            elif session.steps[-1].verdict is not None:  # its chain stopped at the depth: it goes on
                last = session.steps[-1]
                self._extend(session, last.round.following([last.verdict.result.next_token]))
            return Stepped(stepped.verdict, stepped.ahead, stepped.overlap_ms, len(session.steps))

    def drop(self, session_id: str) -> None:
        """The session ended here: forget its steps run ahead."""
        with self._lock:
            self._forget(session_id, self._sessions.pop(session_id, None))

    def _forget(self, session_id: str, session: _Session | None) -> None:
        for _ in session.steps if session is not None else ():
            self._count("unused")

    def _extend(self, session: _Session, following: Round) -> None:
        """Start ``following`` when the room and the depth allow (holding the lock); once done, it
        starts the step after it the same way."""
        if len(session.steps) >= min(self.depth, session.room):
            return
        pending = _Pending(following, time.perf_counter())
        parent = otel_context.get_current()

        def run() -> Verdict:
            token = otel_context.attach(parent)
            try:
                with telemetry.tracer().start_as_current_span("verifier ahead step", attributes={
                        "specgrove.session_id": following.session_id, "specgrove.step": following.step}):
                    verdict = self.worker.verify(following, empty_tree())
            finally:
                pending.finished = time.perf_counter()
                otel_context.detach(token)
            with self._lock:
                pending.verdict = verdict
                last = session.steps[-1] if session.steps else None  # not when taken meanwhile
                if self._sessions.get(following.session_id) is session and last is pending:
                    self._extend(session, following.following([verdict.result.next_token]))
            return verdict

        session.steps.append(pending)
        pending.future = self._pool.submit(run)

    def _take(self, r: Round, arrived: float) -> Stepped | None:
        """The step run ahead for exactly ``r``, when it is the next one under way; else every
        step under way is waited for and dropped (never two steps of one session at once)."""
        with self._lock:
            session = self._sessions.get(r.session_id)
            head = session.steps.popleft() if session is not None and session.steps else None
        if head is None:
            return None
        verdict = None
        if head.round != r:
            _wait(head.future)
        else:
            try:
                verdict = head.future.result()
            except Exception as exc:  # noqa: BLE001 - whatever failed, the step is verified afresh
                log.info("step %d of session %s run ahead failed (%s); verifying it afresh", r.step, r.session_id, exc)
        if verdict is None:
            self._count("miss")
            self._drain(r.session_id)
            return None
        self._count("hit")
        return Stepped(verdict, True, max(0.0, (min(arrived, head.finished or arrived) - head.started) * 1000))

    def _drain(self, session_id: str) -> None:
        """Wait for and drop the session's steps under way (a step before them missed)."""
        with self._lock:
            session = self._sessions.get(session_id)
            steps = [*session.steps] if session is not None else []
            if session is not None:
                session.steps.clear()
        for pending in steps:
            self._count("miss")
            _wait(pending.future)

    def _count(self, outcome: str) -> None:
        self.worker.metrics.ahead_steps.labels(outcome=outcome).inc()


def _wait(future: Future | None) -> None:
    if future is None:
        return
    try:
        future.result()
    except Exception:  # noqa: BLE001 - its outcome is not wanted
        pass
