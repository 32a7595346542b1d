"""Draft-ahead on a drafter: the next round drawn and verified as soon as this one's
verdict is in, while the verdict travels to the orchestrator, is committed to Redis, and the
orchestrator's request for the next round travels back.

A served round costs the drafter → verifier → drafter hops and the orchestrator ↔ drafter hops
on top of draft and verify. Once the drafter holds round r's verdict it knows round r + 1's
context exactly (r's context plus the verdict's tokens): nothing needs guessing. So with the
orchestrator's permission (``DraftOrder.ahead``) it runs round r + 1 at once under r's plan; the
orchestrator's request for r + 1 then finds it drawn, verified or on its way, and the
orchestrator ↔ drafter hops and the commit overlap the next round instead of preceding it.

Exactness is untouched: the round run ahead is the very round the request asks for (same
session, run, step, context, sampling, seed and verifier: the RNG streams are keyed by (seed,
step)); only its plan is the previous round's. A request that differs in any of these is drafted
afresh (after the round run ahead has ended, so one session never has two rounds drawing at
once), and so is one whose round run ahead failed."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

from opentelemetry import context as otel_context

from specgrove import telemetry
from specgrove.round import DraftOrder, RoundReport

log = logging.getLogger(__name__)


def same_round(order: DraftOrder) -> tuple:
    """What makes two orders the same round: the round itself and the verifier."""
    return order.round, order.verifier


@dataclass
class _Pending:
    key: tuple
    started: float
    future: Future | None = None
    finished: float | None = None


class AheadRounds:
    """The rounds a drafter runs ahead, at most one per session; ``metrics`` counts their
    outcomes (``hit``: asked for as drawn; ``miss``: asked otherwise, or it failed; ``unused``:
    never asked for, as after a session's last round)."""

    def __init__(self, max_rounds: int, metrics=None):
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_rounds), thread_name_prefix="draft-ahead")
        self._metrics = metrics

    def start(self, order: DraftOrder, report: RoundReport, run_round: Callable) -> None:
        """The verdict of ``order``'s round is ``report``: draw the next round in the background
        with ``run_round(order, timeout_s) -> report``."""
        following = order.following([*report.result.accepted_tokens, report.result.next_token])
        if following is None:
            return
        pending = _Pending(same_round(following), time.perf_counter())
        parent = otel_context.get_current()
        timeout = following.verify_timeout_s
        session_id = following.round.session_id

        def run():
            token = otel_context.attach(parent)
            try:
                with telemetry.tracer().start_as_current_span("drafter ahead round", attributes={
                        "specgrove.session_id": session_id, "specgrove.step": following.round.step}):
                    return run_round(following, timeout)
            finally:
                pending.finished = time.perf_counter()
                otel_context.detach(token)

        with self._lock:
            if self._pending.pop(session_id, None) is not None:
                self._count("unused")
            self._pending[session_id] = pending
            pending.future = self._pool.submit(run)

    def take(self, order: DraftOrder, arrived: float) -> RoundReport | None:
        """The report of the round run ahead for exactly ``order`` (waiting for it), with
        ``timing.ahead`` set and ``timing.overlap_ms`` the part of it run before ``arrived``; None
        when there is none (draft afresh)."""
        r = order.round
        with self._lock:
            pending = self._pending.pop(r.session_id, None)
        if pending is None:
            return None
        timeout = order.verify_timeout_s
        if pending.key != same_round(order):
            self._count("miss")
            _wait(pending.future, timeout)  # never two rounds of one session drawing at once
            return None
        try:
            report = pending.future.result(timeout)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the round is drawn afresh
            log.info("round %d of session %s run ahead failed (%s); drafting it afresh", r.step, r.session_id, exc)
            self._count("miss")
            return None
        self._count("hit")
        overlap_ms = max(0.0, (min(arrived, pending.finished or arrived) - pending.started) * 1000)
        return replace(report, timing=replace(report.timing, ahead=True, overlap_ms=overlap_ms))

    def drop(self, session_id: str) -> None:
        """The session ended here: forget its round run ahead (its run is refused from now on, so it stops)."""
        with self._lock:
            if self._pending.pop(session_id, None) is not None:
                self._count("unused")

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.ahead_rounds.labels(outcome=outcome).inc()


def _wait(future: Future | None, timeout: float | None) -> None:
    if future is None:
        return
    try:
        future.result(timeout)
    except Exception:  # noqa: BLE001 - its outcome is not wanted
        pass
