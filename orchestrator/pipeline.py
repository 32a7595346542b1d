"""The orchestrator's session loop over remote workers (asyncio): validate, create or resume the
session in Redis, then drive the round core (rounds.py, shared with the in-process engine) with
rounds of draft → stream → verify until a stop rule fires.

Each round the planner picks a tree (or K = 0), the stop policy a budget; the drafter grows the
tree and streams it to the verifier, and the round's tokens are committed to Redis by step
before the client sees them. A failed or slow drafter turns the round into a plain decoding
step on the verifier (retrying the drafter after ``drafter_retry_s``); a failed verifier is
marked down and the session moves to the next one (which re-prefills from the context, which
comes from Redis), its lease renewed while it waits; a Redis outage is ridden through by the
store (``SessionStore``: every call retried for its ``retry_s``, all idempotent). When every
attempt fails the client gets ``UNAVAILABLE`` and can resume the session later by its id, which
it has from the stream's initial metadata (sent once the session exists, before any round).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Awaitable, Callable

import grpc

from orchestrator.acceptance import AcceptanceStats
from orchestrator.placement import Placement, Workers
from orchestrator.round_planner import DEFAULT_PRIOR_ACCEPTANCE, LinkStats
from orchestrator.rounds import RoundOutcome, RoundPlan, SessionRounds, Speculation, check_request, planner_for
from orchestrator.session_store import Session, SessionStore
from orchestrator.stop_policy import make_policy
from specgrove import codec, telemetry
from specgrove.errors import InvalidArgument, OutOfRange, ResourceExhausted, SpecGroveError, Unavailable
from specgrove.generate import ChunkEvent, CompletionEvent, GenerateCall
from specgrove.metrics import OrchestratorMetrics
from specgrove.models import TextCodec
from specgrove.output import GenerationOutput
from specgrove.sampling import make_generator
from specgrove.tls import TlsConfig
from specgrove.tree import VerifyResult
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED)


class SessionBusy(SpecGroveError):
    code = "ABORTED"


@dataclass(frozen=True)
class PipelineConfig:
    drafters: tuple[str, ...]  # host:port of drafter workers (empty: plain decoding only)
    verifiers: tuple[str, ...]  # host:port of verifier workers
    mode: str = "chain"  # default speculation mode: ar | chain | tree
    draft_len: int = 4  # chain: most draft tokens per round
    goodput: bool = True  # a request naming no draft length gets chains sized by goodput (False: draft_len exactly)
    draft_ahead: bool = True  # a drafter runs the next round as soon as it holds this one's verdict (issue 16)
    guess_ahead: bool = False  # with draft_ahead, on chains: the drafter also guesses the verdict (drafter/guess.py)
    stop_policy: str = "adaedl"
    adaedl_gamma: float = 0.2
    adaedl_lambda: float = 0.5
    draft_timeout_ms: int = 5000  # a Draft call slower than this falls back to K = 0
    verify_timeout_ms: int = 30000
    drafter_retry_s: float = 2.0  # how long a failed drafter (or verifier) is skipped
    verifier_retry_s: float = 30.0  # how long the verifiers are retried (each in turn) before UNAVAILABLE
    max_sessions: int = 64  # concurrent generations; more wait in a queue, then get RESOURCE_EXHAUSTED
    queue_timeout_s: float = 2.0  # how long a generation waits for a free slot
    prior_acceptance: tuple[float, ...] = tuple(DEFAULT_PRIOR_ACCEPTANCE)
    verify_ratio: dict | None = None  # the verify-cost curve from a calibration profile
    auth_token: str | None = None  # sent to the workers (they check it when they have one)
    tls: TlsConfig | None = None  # TLS (mTLS with a client certificate) to the workers; None: plaintext


@dataclass
class _Run:
    session: Session
    speculation: Speculation
    resume_from: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this run's lease token
    place: Placement | None = None  # the workers its rounds ran on (their caches are freed at the end)
    ahead: tuple[str, RoundPlan] | None = None  # (drafter, plan): that drafter runs the next round ahead


class Pipeline:
    def __init__(self, text: TextCodec, store: SessionStore, config: PipelineConfig):
        if not config.verifiers:
            raise InvalidArgument("verifiers", "at least one verifier address is required")
        self.text, self.store, self.config = text, store, config
        self.metrics = OrchestratorMetrics()  # served as /metrics on the HTTP port
        self.links: dict[tuple[str, str], LinkStats] = {}  # per drafter–verifier pair, shared by sessions
        self.acceptance = AcceptanceStats(list(config.prior_acceptance))  # global, across sessions
        self.workers = Workers(config.drafters, config.verifiers, config.drafter_retry_s, config.tls)
        self._active = 0
        self._slots = asyncio.Semaphore(config.max_sessions)  # FIFO: waiters are served in order
        self._auth = [("authorization", f"Bearer {config.auth_token}")] if config.auth_token else []

    # ------------------------------------------------------------------ validation, sessions

    def _speculation(self, raw: dict) -> Speculation:
        spec = Speculation.from_dict(raw, self.config.mode, self.config.draft_len)
        if not self.config.goodput:
            spec = replace(spec, adaptive=False)
        return spec.validated(can_draft=bool(self.config.drafters))  # no drafter deployed: plain decoding

    def _prompt(self, call: GenerateCall) -> list[int]:
        if call.prompt_ids is not None:
            return list(call.prompt_ids)  # checked with the rest of the request
        if not call.prompt_text:
            raise InvalidArgument("prompt", "send text or token_ids (or a session_id to resume)")
        return self.text.chat_prompt(call.prompt_text) if call.chat else self.text.encode(call.prompt_text)

    async def open(self, call: GenerateCall) -> _Run:
        """Validate and create (or load) the session: every error is raised here, before any work."""
        if call.session_id:
            session = await self.store.load(call.session_id)
            if call.resume_from > len(session.tokens):
                raise OutOfRange("resume_from", f"session {session.id} has {len(session.tokens)} tokens, "
                                                f"got resume_from={call.resume_from}")
            await self._reserve()
            return _Run(session, self._speculation(session.speculation), call.resume_from)
        params = call.params.validate(vocab_size=self.text.vocab_size, max_new_tokens_limit=self.text.max_positions)
        spec = self._speculation(call.speculation).for_request(params)
        prompt = self._prompt(call)
        check_request(prompt, params, spec, self.text.vocab_size, self.text.max_positions)
        await self._reserve()
        try:
            _, seed = make_generator(params.seed)
            session_id = await self.store.create(prompt, params, seed, spec.to_dict())
            return _Run(await self.store.load(session_id), spec, 0)
        except BaseException:
            self._free()
            raise

    async def _reserve(self) -> None:
        """Count a generation against max_sessions, first come first served: wait up to
        ``queue_timeout_s`` for a slot, then RESOURCE_EXHAUSTED. ``_free`` gives it back."""
        self.metrics.waiting.inc()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.config.queue_timeout_s)
        except asyncio.TimeoutError:
            raise ResourceExhausted(f"{self._active} generations running (limit {self.config.max_sessions}) and "
                                    f"none ended within {self.config.queue_timeout_s:g} s; retry later") from None
        finally:
            self.metrics.waiting.dec()
        self._active += 1
        self.metrics.running.set(self._active)

    def _free(self) -> None:
        self._active -= 1
        self._slots.release()
        self.metrics.running.set(self._active)

    # ------------------------------------------------------------------ the loop

    async def run(self, run: _Run, time_remaining: Callable[[], float | None],
                  announce: Callable[[str], Awaitable[None]] | None = None) -> AsyncIterator[ChunkEvent | CompletionEvent]:
        """Replay confirmed tokens from ``resume_from``, then generate until a stop rule fires.
        ``announce(session_id)`` runs first: the transport tells the client its session id before
        any later step can fail (gRPC: initial metadata), so a failed stream can always be resumed.

        A client that goes away (cancel, deadline, disconnect) or a server shutdown stops the
        loop and releases the lease, leaving the session resumable; only ``Abort`` ends it as
        ``cancelled``."""
        try:
            if announce is not None:
                await announce(run.session.id)
            if run.session.status != "done":
                await self._acquire(run.session.id, run.token)
                run.session = await self.store.load(run.session.id)  # whatever was committed while we waited
            s = run.session
            output = GenerationOutput(self.text.decode, self.text.eos_token_ids, s.params)
            for token in s.tokens[: run.resume_from]:
                output.add(token)
            output.release()
            rest = s.tokens[run.resume_from:]
            for token in rest:
                output.add(token)
            if rest:
                yield ChunkEvent(s.id, run.resume_from, rest, output.release(), step=s.step)
            if s.status == "done":
                yield self._completion(s, output, s.finish_reason, len(s.tokens))
                return
            if output.finish_reason is not None:  # committed, but the orchestrator died before finishing
                await self.store.finish(s.id, output.finish_reason)
                yield self._completion(s, output, output.finish_reason, len(s.tokens))
                return
            async for event in self._rounds(run, output, time_remaining):
                yield event
        finally:
            self._free()
            if run.place is not None:  # on every end, a client's disconnect included
                asyncio.ensure_future(self._release_workers(run, run.place.drafter, run.place.verifier))
            asyncio.ensure_future(self._release_lease(run))  # not awaited: Redis may be the thing that failed

    async def _acquire(self, session_id: str, token: str) -> None:
        deadline = time.monotonic() + self.store.lease_ms / 1000 + 1.0
        while not await self.store.acquire(session_id, token):
            if time.monotonic() > deadline:
                raise SessionBusy(f"session {session_id} is being generated by another stream; retry later")
            await asyncio.sleep(0.2)

    async def _rounds(self, run: _Run, output: GenerationOutput, time_remaining) -> AsyncIterator:
        """The round core driven over the workers: plan, draft + verify remotely, commit to Redis
        (which also renews the lease), then stream the round to the client."""
        s, spec = run.session, run.speculation
        self._trace_request(s, spec)
        place = run.place = self.workers.place()
        link = self.links.setdefault((place.drafter, place.verifier),
                                     LinkStats(verify_ratio=dict(self.config.verify_ratio or {}) or LinkStats().verify_ratio))
        core = SessionRounds(spec, output, planner_for(spec, link, self.acceptance), self._policy(s, spec), s.step)
        started, first_at, first_step = time.perf_counter(), None, s.step + 1
        cancelled = await self.store.cancelled(s.id)
        finish = "cancelled" if cancelled else None  # later rounds learn it from the commit
        while core.finish_reason is None and finish is None:
            remaining = time_remaining()
            if remaining is not None and remaining < 2 * max(link.plain_ms or 0, 50) / 1000:
                finish = "time_limit"
                break
            plan = core.plan()
            with telemetry.tracer().start_as_current_span("round") as round_span:
                result, drafted, depth = await self._round(run, plan, s.prompt + output.token_ids, place, link,
                                                           measure=plan.step > first_step,  # 1st: prefill
                                                           ahead=self._ahead_room(core, plan))
                outcome = core.commit(plan, result, drafted, depth)
                round_span.set_attributes({"specgrove.step": plan.step, "specgrove.tree_size": drafted,
                                           "specgrove.tree_depth": depth, "specgrove.plan": plan.reason,
                                           "specgrove.accepted": outcome.accepted})
            if await self._commit(run, outcome, core.policy) and core.finish_reason is None:
                finish = "cancelled"  # Abort: this round's tokens still reach the client
            self.metrics.record_round(drafted, outcome.accepted, len(outcome.emitted), plan.reason)
            if first_at is None:
                first_at = time.perf_counter()
                self.metrics.ttft.observe(first_at - started)
            yield ChunkEvent(s.id, outcome.index, outcome.emitted, outcome.text, outcome.step, drafted,
                             outcome.accepted, drafted, depth)
        finish = finish or core.finish_reason
        n = len(output.token_ids)
        if first_at is not None and n > 1:
            self.metrics.tpot.observe((time.perf_counter() - first_at) / max(1, n - 1))
        self.metrics.record_finish(finish, len(s.prompt), time.perf_counter() - started)
        await self.store.finish(s.id, finish)
        telemetry.trace.get_current_span().set_attributes({"gen_ai.usage.output_tokens": n,
                                                           "gen_ai.response.finish_reasons": [finish]})
        yield self._completion(s, output, finish, n)

    def _ahead_room(self, core: SessionRounds, plan: RoundPlan) -> int:
        """What the drafter may run ahead: 0 (nothing) unless the planner drafts this round as
        its plan (not a probe or a measurement at K = 0: the round run ahead is always taken, so
        a probe would cost two rounds); else the tokens the session may still emit, this round's
        included. (The drafter runs the next round only when this one leaves some to draft; one
        that ends on EOS or a stop string wastes it.)"""
        drafts_by_plan = plan.shape is not None and plan.shape.size and plan.reason in ("plan", "fixed")
        if not self.config.draft_ahead or not drafts_by_plan:
            return 0
        return core.output.max_new_tokens - len(core.output.token_ids)

    def _trace_request(self, s: Session, spec: Speculation) -> None:
        telemetry.trace.get_current_span().set_attributes({
            "gen_ai.operation.name": "text_completion", "gen_ai.system": "specgrove",
            "gen_ai.request.model": self.text.name, "gen_ai.request.temperature": s.params.temperature,
            "gen_ai.request.top_p": s.params.top_p, "gen_ai.request.top_k": s.params.top_k,
            "gen_ai.request.max_tokens": s.params.max_new_tokens, "gen_ai.request.seed": s.seed,
            "gen_ai.usage.input_tokens": len(s.prompt), "specgrove.session_id": s.id, "specgrove.mode": spec.mode,
        })

    def _policy(self, s: Session, spec: Speculation):
        """The session's draft-length policy, with AdaEDL's λ restored from Redis when resumed."""
        cfg = self.config
        policy = make_policy(cfg.stop_policy, max(1, spec.max_len), cfg.adaedl_gamma, cfg.adaedl_lambda)
        if "lambda" in s.controller and hasattr(policy, "lam"):
            policy.lam, policy.acceptance = s.controller["lambda"], s.controller["running_acceptance"]
        return policy

    async def _commit(self, run: _Run, outcome: RoundOutcome, policy) -> bool:
        """Append the round to Redis by step; the session's totals follow. True when Abort was asked."""
        s = run.session
        committed, cancelled = await self.store.append(s.id, outcome.step, outcome.emitted, policy.state(),
                                                       outcome.drafted, outcome.accepted, run.token)
        if committed != outcome.step:
            raise SessionBusy(f"session {s.id}: round {outcome.step} was committed by another stream")
        s.tokens = s.tokens + outcome.emitted
        s.step, s.drafted, s.accepted = outcome.step, s.drafted + outcome.drafted, s.accepted + outcome.accepted
        return cancelled

    def _completion(self, s: Session, output: GenerationOutput, finish: str, n: int) -> CompletionEvent:
        return CompletionEvent(s.id, finish, output.text, s.seed, len(s.prompt), n, s.step, s.drafted, s.accepted)

    # ------------------------------------------------------------------ one round on the workers

    async def _round(self, run: _Run, plan: RoundPlan, context: list[int], place: Placement,
                     link: LinkStats, measure: bool = True, ahead: int = 0) -> tuple[VerifyResult, int, int]:
        """(result, draft tokens proposed, tree depth). Falls back to K = 0 when the drafter fails.
        ahead: when > 0, the drafter may run the next round as soon as it holds this one's verdict
        (``DraftRequest.ahead_room``); a round run ahead is always collected (a plain step planned
        in its place comes a round later)."""
        s, drafter = run.session, place.drafter
        pending, run.ahead = run.ahead, None
        room = s.params.max_new_tokens - (len(context) - len(s.prompt))  # tokens still to emit
        if pending is not None and min(pending[1].budget.max_len, room - 1) <= 0:
            pending = None  # the last round left nothing to draft: the drafter ran nothing ahead
        round_pb = speculate_pb2.RoundContext(session_id=s.id, step=plan.step, context=codec.pack_ids(context),
                                              sampling=codec.params_to_pb(s.params), seed=s.seed,
                                              output_start=len(s.prompt), run=run.token)
        if drafter and not self.workers.live(drafter):
            drafter = place.drafter = self.workers.next_live(self.workers.drafters, drafter)  # move if one is live
        if pending is not None and pending[0] == drafter and (plan.shape is None or not plan.shape.size):
            budget = replace(pending[1].budget, max_len=min(pending[1].budget.max_len, room - 1))  # as the drafter did
            plan, ahead = replace(plan, shape=pending[1].shape, budget=budget), 0
        shape = plan.shape
        if shape is not None and shape.size and drafter and self.workers.live(drafter):
            drafted = await self._draft_round(round_pb, plan, drafter, place.verifier, link, measure, ahead,
                                              asked=pending is not None)
            if drafted is not None:
                if ahead:
                    run.ahead = (drafter, plan)
                return drafted
        return await self._plain_round(run, round_pb, place, link, measure)

    async def _draft_round(self, round_pb, plan: RoundPlan, drafter: str, verifier: str, link: LinkStats,
                           measure: bool, ahead: int = 0, asked: bool = False) -> tuple[VerifyResult, int, int] | None:
        """The drafter grows the tree and streams it to the verifier; None when the drafter failed.
        ahead: the room it may run the next round in (0: it may not); asked: the last round gave
        it that leave."""
        request = speculate_pb2.DraftRequest(round=round_pb, plan=codec.budget_to_pb(plan.budget, list(plan.shape.parents)),
                                             verifier=verifier, verify_timeout_ms=self.config.verify_timeout_ms,
                                             ahead=ahead > 0, ahead_room=ahead,
                                             guess=self.config.guess_ahead and ahead > 0)
        stub = speculate_pb2_grpc.DrafterStub(self.workers.channel(drafter))
        t0 = time.perf_counter()
        try:
            reply = await stub.Draft(request, timeout=self.config.draft_timeout_ms / 1000,
                                     metadata=telemetry.inject_metadata() + self._auth)
        except grpc.aio.AioRpcError as err:  # whatever the drafter's failure, the verifier can go on alone
            log.warning("drafter %s failed (%s: %s); plain decoding, retrying it in %.1fs",
                        drafter, err.code().name, err.details(), self.config.drafter_retry_s)
            telemetry.trace.get_current_span().add_event("drafter failed", {"code": err.code().name})
            self.workers.mark_down(drafter)
            return None
        timing = reply.timing
        if asked:
            self.metrics.ahead_rounds.labels(outcome="hit" if timing.ahead else "miss").inc()
        telemetry.trace.get_current_span().set_attributes({
            "specgrove.ahead": timing.ahead, "specgrove.overlap_ms": timing.overlap_ms, "specgrove.guessed": timing.guessed,
            "specgrove.draft_ms": timing.draft_ms, "specgrove.verify_ms": timing.verify_ms})
        if measure:
            link.observe_load(timing.sessions, timing.pass_tokens)
            link.observe_pass(timing.pass_rows, timing.verify_ms)
            link.observe_tree((time.perf_counter() - t0) * 1000, timing.draft_ms, timing.verify_ms,
                              reply.tree_size, reply.tree_depth, timing.tree_bytes, timing.overlap_ms)
        return codec.result_from_pb(reply), reply.tree_size, reply.tree_depth

    async def _plain_round(self, run: _Run, round_pb, place: Placement, link: LinkStats,
                           measure: bool) -> tuple[VerifyResult, int, int]:
        """A K = 0 step on the verifier. A failing verifier is marked down and the step moves to
        the next one (which re-prefills from the context); the lease is renewed while retrying."""
        s, verifiers = run.session, self.config.verifiers
        error, attempt = None, 0
        give_up = time.monotonic() + self.config.verifier_retry_s
        while time.monotonic() < give_up:
            stub = speculate_pb2_grpc.VerifierStub(self.workers.channel(place.verifier))
            t0 = time.perf_counter()
            try:
                reply = await stub.Decode(round_pb, timeout=self.config.verify_timeout_ms / 1000,
                                          metadata=telemetry.inject_metadata() + self._auth)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE:
                    raise
                error, attempt = err, attempt + 1
                log.warning("verifier %s failed (%s); session %s moves on", place.verifier, err.code().name, s.id)
                self.workers.mark_down(place.verifier)
                place.verifier = self.workers.next_live(self.workers.verifiers, place.verifier)
                await self._renew(run)
                await asyncio.sleep(min(2.0, 0.1 * 2 ** (attempt // len(verifiers))))
                continue
            if measure:
                link.observe_load(reply.timing.sessions, reply.timing.pass_tokens)
                link.observe_pass(reply.timing.pass_rows, reply.timing.verify_ms)
                link.observe_plain((time.perf_counter() - t0) * 1000, reply.timing.verify_ms)
            return codec.result_from_pb(reply), 0, 0
        last = f"{error.code().name}: {error.details()}" if error else "no attempt"
        raise Unavailable(f"no verifier answered for {self.config.verifier_retry_s:.0f}s ({last}); "
                          f"resume session {s.id} later")

    async def _renew(self, run: _Run) -> None:
        """Keep the session's lease while its round waits for a worker (best effort)."""
        try:
            await self.store.acquire(run.session.id, run.token)
        except Exception:  # noqa: BLE001 - Redis may be down too; the commit renews it later
            pass

    async def _release_lease(self, run: _Run) -> None:
        """Give up the session's lease (best effort: it expires after lease_ms anyway)."""
        try:
            await self.store.release(run.session.id, run.token)
        except Exception:  # noqa: BLE001 - Redis may be down: the lease then lapses on its own
            pass

    async def _release_workers(self, run: _Run, drafter: str, verifier: str) -> None:
        """Free the finished run's KV caches on the workers, and fence its rounds still in flight
        (best effort; LRU evicts otherwise)."""
        request = speculate_pb2.ReleaseRequest(session_id=run.session.id, run=run.token)
        calls = [speculate_pb2_grpc.VerifierStub(self.workers.channel(verifier)).Release(request, timeout=2, metadata=self._auth)]
        if drafter:
            calls.append(speculate_pb2_grpc.DrafterStub(self.workers.channel(drafter)).Release(request, timeout=2,
                                                                                          metadata=self._auth))
        await asyncio.gather(*calls, return_exceptions=True)

    async def close(self) -> None:
        await self.workers.close()
