"""Draft-ahead on a drafter (issue 16): the next round drawn and verified as soon as this one's
verdict is in, while the verdict travels to the orchestrator, is committed to Redis, and the
orchestrator's request for the next round travels back.

A served round costs the drafter → verifier → drafter hops and the orchestrator ↔ drafter hops
on top of draft and verify. Once the drafter holds round r's verdict it knows round r + 1's
context exactly (r's context plus the verdict's tokens): nothing needs guessing. So with the
orchestrator's leave (``DraftRequest.ahead``) it runs round r + 1 at once under r's plan; the
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
from dataclasses import dataclass
from typing import Callable

from opentelemetry import context as otel_context

from specgrove import codec, telemetry
from specgrove.v1 import speculate_pb2

log = logging.getLogger(__name__)


def round_key(request) -> bytes:
    """What makes two requests the same round: the round's context message and the verifier."""
    return request.round.SerializeToString(deterministic=True) + b"\0" + request.verifier.encode()


def next_max_len(request, emitted: int) -> int:
    """The most tokens round r + 1 may draft when round r (``request``) emits ``emitted``: r's
    depth cap, within the tokens r leaves to emit less one (a round emits one more than it
    accepts). Guessed rounds are sized by it too."""
    return min(request.plan.max_len, request.ahead_room - emitted - 1)


def next_request(request, reply):
    """Round r + 1's request: round r's plan (its depth capped by the tokens r leaves to emit),
    its context extended by r's verdict, no leave of its own (``ahead_room``: the tokens it may
    emit, its own included); None when r leaves nothing to draft."""
    emitted = list(reply.accepted_tokens) + [reply.next_token]
    max_len = next_max_len(request, len(emitted))
    if max_len <= 0:
        return None
    following = speculate_pb2.DraftRequest()
    following.CopyFrom(request)
    following.ahead = False
    following.ahead_room = request.ahead_room - len(emitted)  # its own room (guessed draft-ahead sizes by it)
    following.plan.max_len = max_len
    following.round.step = request.round.step + 1
    following.round.context = codec.pack_ids(codec.unpack_ids(request.round.context) + emitted)
    return following


@dataclass
class _Pending:
    key: bytes
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

    def start(self, request, reply, run_round: Callable) -> None:
        """Round ``request``'s verdict is ``reply``: draw the next round in the background with
        ``run_round(request, timeout_s) -> reply``."""
        following = next_request(request, reply)
        if following is None:
            return
        pending = _Pending(round_key(following), time.perf_counter())
        parent = otel_context.get_current()
        timeout = following.verify_timeout_ms / 1000 if following.verify_timeout_ms else None

        def run():
            token = otel_context.attach(parent)
            try:
                with telemetry.tracer().start_as_current_span("drafter ahead round", attributes={
                        "specgrove.session_id": following.round.session_id, "specgrove.step": following.round.step}):
                    return run_round(following, timeout)
            finally:
                pending.finished = time.perf_counter()
                otel_context.detach(token)

        with self._lock:
            if self._pending.pop(following.round.session_id, None) is not None:
                self._count("unused")
            self._pending[following.round.session_id] = pending
            pending.future = self._pool.submit(run)

    def take(self, request, arrived: float):
        """The verdict of the round run ahead for exactly ``request`` (waiting for it), with
        ``timing.ahead`` set and ``timing.overlap_ms`` the part of it run before ``arrived``; None
        when there is none (draft afresh)."""
        with self._lock:
            pending = self._pending.pop(request.round.session_id, None)
        if pending is None:
            return None
        timeout = request.verify_timeout_ms / 1000 if request.verify_timeout_ms else None
        if pending.key != round_key(request):
            self._count("miss")
            _wait(pending.future, timeout)  # never two rounds of one session drawing at once
            return None
        try:
            reply = pending.future.result(timeout)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the round is drawn afresh
            log.info("round %d of session %s run ahead failed (%s); drafting it afresh", request.round.step,
                     request.round.session_id, exc)
            self._count("miss")
            return None
        self._count("hit")
        reply.timing.ahead = True
        reply.timing.overlap_ms = max(0.0, (min(arrived, pending.finished or arrived) - pending.started) * 1000)
        return reply

    def drop(self, session_id: str) -> None:
        """The session ended here: forget its round run ahead (its run is fenced, so it stops)."""
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
