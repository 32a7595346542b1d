"""Steps ahead: the verifier runs a session's next plain (K = 0) step as soon as it holds this
step's verdict, the draft-ahead of plain decoding (drafter/ahead.py is the drafted rounds').

A plain step's verdict leaves the next step's context known exactly (this context plus the token
it emitted). With the orchestrator's permission (``Decode``'s ``ahead_room``: tokens the session
may still emit) the verifier verifies that step at once, while the verdict travels to the
orchestrator, is committed to Redis and streamed to the client, and the orchestrator asks for the
next step. That request finds the step verified or in its pass: the orchestrator's hops and its
commit overlap the next pass instead of preceding it. Exactness is untouched: the step run ahead is
the very round asked for (same session, run, step, context, sampling and seed; its random draws
are keyed by (seed, step)); a request that differs in anything is verified afresh. A step run ahead
past the session's end (EOS, a stop string) is wasted, at most one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from opentelemetry import context as otel_context

from specgrove import telemetry
from specgrove.round import Round, Verdict
from verifier.worker import VerifierWorker, empty_tree

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    round: Round
    started: float
    future: Future | None = None
    finished: float | None = None


@dataclass(frozen=True)
class Stepped:
    """A plain step's verdict, and whether it ran ahead (with how much of it had run before the
    request arrived: the time it saved)."""

    verdict: Verdict
    ahead: bool = False
    overlap_ms: float = 0.0


class StepsAhead:
    """The plain steps a verifier runs ahead, at most one per session; ``metrics`` counts their
    outcomes (``verify_ahead_steps``: hit, miss, unused)."""

    def __init__(self, worker: VerifierWorker):
        self.worker = worker
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, worker.max_sessions), thread_name_prefix="step-ahead")

    def decode(self, r: Round, ahead_room: int = 0) -> Stepped:
        """The plain step ``r``: taken from the step run ahead for exactly it, else verified now;
        then, with ``ahead_room`` tokens left to emit past this step's, the next one started."""
        arrived = time.perf_counter()
        stepped = self._take(r, arrived)
        if stepped is None:
            stepped = Stepped(self.worker.verify(r, empty_tree()))
        emitted = [*stepped.verdict.result.accepted_tokens, stepped.verdict.result.next_token]
        if ahead_room > len(emitted):
            self._start(r.following(emitted))
        return stepped

    def drop(self, session_id: str) -> None:
        """The session ended here: forget its step run ahead."""
        with self._lock:
            if self._pending.pop(session_id, None) is not None:
                self._count("unused")

    def _start(self, following: Round) -> None:
        pending = _Pending(following, time.perf_counter())
        parent = otel_context.get_current()

        def run() -> Verdict:
            token = otel_context.attach(parent)
            try:
                with telemetry.tracer().start_as_current_span("verifier ahead step", attributes={
                        "specgrove.session_id": following.session_id, "specgrove.step": following.step}):
                    return self.worker.verify(following, empty_tree())
            finally:
                pending.finished = time.perf_counter()
                otel_context.detach(token)

        with self._lock:
            if self._pending.pop(following.session_id, None) is not None:
                self._count("unused")
            self._pending[following.session_id] = pending
            pending.future = self._pool.submit(run)

    def _take(self, r: Round, arrived: float) -> Stepped | None:
        with self._lock:
            pending = self._pending.pop(r.session_id, None)
        if pending is None:
            return None
        if pending.round != r:
            self._count("miss")
            _wait(pending.future)  # never two steps of one session at once
            return None
        try:
            verdict = pending.future.result()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the step is verified afresh
            log.info("step %d of session %s run ahead failed (%s); verifying it afresh", r.step, r.session_id, exc)
            self._count("miss")
            return None
        self._count("hit")
        return Stepped(verdict, True, max(0.0, (min(arrived, pending.finished or arrived) - pending.started) * 1000))

    def _count(self, outcome: str) -> None:
        self.worker.metrics.ahead_steps.labels(outcome=outcome).inc()


def _wait(future: Future | None) -> None:
    if future is None:
        return
    try:
        future.result()
    except Exception:  # noqa: BLE001 - its outcome is not wanted
        pass
