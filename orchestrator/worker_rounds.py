"""One round of a session on the remote workers: drafted (the drafter grows the tree and streams it
to the verifier) or a plain K = 0 step on the verifier, with failover.

A failed or slow drafter turns the round into a plain step (retrying the drafter after
``drafter_retry_s``); a failed verifier is marked down and the step moves to the next one (which
re-prefills from the context), the session's lease renewed while it waits."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import grpc

from orchestrator.placement import Placement, Workers
from orchestrator.rounds import RoundPlan
from orchestrator.session_run import RunLease, SessionRun
from specgrove import codec, telemetry
from specgrove.errors import Unavailable
from specgrove.metrics import OrchestratorMetrics
from specgrove.round import DraftOrder, Round, RoundReport
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED)


class WorkerRounds:
    def __init__(self, workers: Workers, config, metrics: OrchestratorMetrics, lease: RunLease):
        self.workers, self.config, self.metrics, self.lease = workers, config, metrics, lease
        self._auth = [("authorization", f"Bearer {config.auth_token}")] if config.auth_token else []

    async def place(self, run: SessionRun) -> Placement:
        """Place the run's session (a resumed one where its last run was, when it can take it), and
        remember its verifier in the store (best effort)."""
        await self.workers.refresh(wait=True)
        place = run.place = self.workers.place(run.session.id, prefer=run.session.verifier or None)
        self.metrics.sessions_placed.labels(verifier=place.verifier).inc()
        asyncio.ensure_future(self._remember(run))  # not awaited: Redis may be riding out an outage
        return place

    async def _remember(self, run: SessionRun) -> None:
        if run.session.verifier != run.place.verifier:
            try:
                await self.lease.store.place(run.session.id, run.place.verifier)
                run.session.verifier = run.place.verifier
            except Exception:  # noqa: BLE001 - an optimisation: a resumed session then prefills elsewhere
                log.info("could not remember session %s's verifier", run.session.id)

    async def round(self, run: SessionRun, plan: RoundPlan, r: Round, ahead: int = 0) -> tuple[RoundReport, float]:
        """(the round's report, the orchestrator's wait for it in ms). Falls back to K = 0 when the
        drafter fails. ahead: when > 0, the worker may run the next round as soon as it holds this
        one's verdict: the drafter a drafted round (``DraftOrder.ahead_room``), the verifier a
        plain step (``Decode``'s ``ahead_room``). A round run ahead is always collected (a round
        planned otherwise in its place comes a round later)."""
        place = run.place
        await self.workers.refresh()  # the workers' load, polled in the background now and then
        if self.workers.should_move(place.verifier):
            self._move(run, "its verifier drains or left the pool")
        ran_ahead = self._ran_ahead(run, r)
        step_ahead, run.step_ahead = run.step_ahead, ""
        plain = plan.shape is None or not plan.shape.size
        if step_ahead and step_ahead == place.verifier:  # collected as the plain step it ran as
            return await self._plain(run, r, ahead if plain else 0)
        if place.drafter and not self.workers.live(place.drafter):  # move if one is live
            place.drafter = self.workers.next_live(self.workers.drafters, place.drafter)
        order = None
        if not plain:
            order = DraftOrder(r, plan.shape.parents, plan.budget, place.verifier, self.config.verify_timeout_ms / 1000,
                               ahead > 0, ahead, self.config.guess_ahead and ahead > 0)
        elif ran_ahead is not None and ran_ahead[0] == place.drafter:  # collected under the plan it ran with
            order = replace(ran_ahead[1], round=r, verifier=place.verifier, ahead=False, ahead_room=0, guess=False)
        if order is not None and place.drafter and self.workers.live(place.drafter):
            drafted = await self._drafted(order, place.drafter, asked=ran_ahead is not None)
            if drafted is not None:
                if order.ahead:
                    run.ahead = (place.drafter, order)
                return drafted
        return await self._plain(run, r, ahead if order is None else 0)

    @staticmethod
    def _ran_ahead(run: SessionRun, r: Round) -> tuple[str, DraftOrder] | None:
        """(drafter, order) of the round ``r`` its drafter ran ahead, as it did (``DraftOrder.following``),
        if it did; None when it had no permission or the last round left nothing to draft."""
        pending, run.ahead = run.ahead, None
        if pending is None:
            return None
        drafter, previous = pending
        following = previous.following(list(r.context[len(previous.round.context):]))
        return (drafter, following) if following is not None else None

    async def _drafted(self, order: DraftOrder, drafter: str, asked: bool) -> tuple[RoundReport, float] | None:
        """The drafter grows the tree and streams it to the verifier; None when the drafter failed.
        asked: the last round gave it permission to run this one ahead."""
        stub = speculate_pb2_grpc.DrafterStub(self.workers.channel(drafter))
        t0 = time.perf_counter()
        try:
            reply = await stub.Draft(codec.order_to_pb(order), timeout=self.config.draft_timeout_ms / 1000,
                                     metadata=telemetry.inject_metadata() + self._auth)
        except grpc.aio.AioRpcError as err:  # whatever the drafter's failure, the verifier can go on alone
            log.warning("drafter %s failed (%s: %s); plain decoding, retrying it in %.1fs",
                        drafter, err.code().name, err.details(), self.config.drafter_retry_s)
            telemetry.trace.get_current_span().add_event("drafter failed", {"code": err.code().name})
            self.workers.mark_down(drafter)
            return None
        waited_ms = (time.perf_counter() - t0) * 1000
        report = codec.report_from_pb(reply)
        timing = report.timing
        if asked:
            self.metrics.ahead_rounds.labels(outcome="hit" if timing.ahead else "miss").inc()
        telemetry.trace.get_current_span().set_attributes({
            "specgrove.ahead": timing.ahead, "specgrove.overlap_ms": timing.overlap_ms, "specgrove.guessed": timing.guessed,
            "specgrove.draft_ms": timing.draft_ms, "specgrove.verify_ms": timing.verify_ms})
        return report, waited_ms

    async def _plain(self, run: SessionRun, r: Round, ahead: int = 0) -> tuple[RoundReport, float]:
        """A K = 0 step on the verifier (``ahead`` > 0: it may run the next one ahead, within that
        many tokens left to emit). A failing verifier is marked down and the step moves to the
        next one (which re-prefills from the context); the lease is renewed while retrying."""
        place = run.place
        error, attempt = None, 0
        give_up = time.monotonic() + self.config.verifier_retry_s
        request = codec.round_to_pb(r, ahead)
        while time.monotonic() < give_up:
            stub = speculate_pb2_grpc.VerifierStub(self.workers.channel(place.verifier))
            t0 = time.perf_counter()
            try:
                reply = await stub.Decode(request, timeout=self.config.verify_timeout_ms / 1000,
                                          metadata=telemetry.inject_metadata() + self._auth)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE:
                    raise
                error, attempt = err, attempt + 1
                log.warning("verifier %s failed (%s); session %s moves on", place.verifier, err.code().name, r.session_id)
                self.workers.mark_down(place.verifier)
                self._move(run, f"verifier {place.verifier} failed")
                await self.lease.renew(run)
                await asyncio.sleep(min(2.0, 0.1 * 2 ** (attempt // max(1, len(self.workers.verifiers)))))
                continue
            waited_ms = (time.perf_counter() - t0) * 1000
            report = codec.report_from_pb(reply)
            run.step_ahead = place.verifier if report.timing.steps_ahead else ""
            if report.timing.ahead:
                telemetry.trace.get_current_span().set_attributes({"specgrove.ahead": True,
                                                                   "specgrove.overlap_ms": report.timing.overlap_ms})
            return report, waited_ms
        last = f"{error.code().name}: {error.details()}" if error else "no attempt"
        raise Unavailable(f"no verifier answered for {self.config.verifier_retry_s:.0f}s ({last}); "
                          f"resume session {r.session_id} later")

    def _move(self, run: SessionRun, why: str) -> None:
        """The session moves to the best other verifier (which re-prefills from the context); a
        draining one it leaves frees its cache at once (one that failed may come back: the session's
        run must not be refused there then)."""
        place, old = run.place, run.place.verifier
        place.verifier = self.workers.best_verifier(exclude=old, drafter=place.drafter)
        if place.verifier == old:
            return
        self.workers.unassign(run.session.id, old)
        self.workers.assign(run.session.id, place)
        self.metrics.sessions_moved.labels(verifier=place.verifier).inc()
        log.info("session %s moves from verifier %s to %s: %s", run.session.id, old, place.verifier, why)
        asyncio.ensure_future(self._remember(run))
        if self.workers.load(old).draining:
            asyncio.ensure_future(self.release(run, "", old))

    async def release(self, run: SessionRun, drafter: str, verifier: str) -> None:
        """Free the finished run's KV caches on the workers, and refuse its rounds still in flight
        (best effort; LRU evicts otherwise)."""
        request = speculate_pb2.ReleaseRequest(session_id=run.session.id, run=run.token)
        calls = [speculate_pb2_grpc.VerifierStub(self.workers.channel(verifier)).Release(request, timeout=2,
                                                                                       metadata=self._auth)]
        if drafter:
            calls.append(speculate_pb2_grpc.DrafterStub(self.workers.channel(drafter)).Release(request, timeout=2,
                                                                                          metadata=self._auth))
        await asyncio.gather(*calls, return_exceptions=True)
