"""The orchestrator's session loop over remote workers (asyncio): admit the request (admission.py:
validate, create or resume the session in Redis), then drive the round core (rounds.py, shared
with the in-process engine) until a stop rule fires. Each round runs on the workers
(worker_rounds.py: draft → stream → verify, with failover) and is committed to Redis by step
(session_run.py) before the client sees it. When every attempt fails the client gets
``UNAVAILABLE`` and can resume the session later by its id, which it has from the stream's
initial metadata (sent once the session exists, before any round).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from orchestrator.acceptance import AcceptanceStats
from orchestrator.admission import Admission
from orchestrator.placement import Workers
from orchestrator.round_planner import DEFAULT_PRIOR_ACCEPTANCE, LinkStats
from orchestrator.rounds import RoundPlan, SessionRounds, Speculation, planner_for
from orchestrator.session_run import RunLease, SessionRun, trace_request
from orchestrator.session_store import Session, SessionStore
from orchestrator.stop_policy import make_policy
from orchestrator.worker_rounds import WorkerRounds
from specgrove import telemetry
from specgrove.config import STEPS_AHEAD
from specgrove.errors import InvalidArgument
from specgrove.generate import ChunkEvent, CompletionEvent, GenerateCall
from specgrove.metrics import OrchestratorMetrics
from specgrove.models import TextCodec
from specgrove.output import GenerationOutput
from specgrove.round import Round
from specgrove.tls import TlsConfig


@dataclass(frozen=True)
class PipelineConfig:
    drafters: tuple[str, ...]  # host:port of drafter workers (empty: plain decoding only)
    verifiers: tuple[str, ...]  # host:port of verifier workers
    mode: str = "chain"  # default speculation mode: ar | chain | tree
    draft_len: int = 4  # chain: most draft tokens per round
    goodput: bool = True  # a request naming no draft length gets chains sized by goodput (False: draft_len exactly)
    draft_ahead: bool = True  # a drafter runs the next round as soon as it holds this one's verdict
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
    resolve_s: float = 5.0  # how often the workers' names are looked up again (dns:///, file:)
    poll_s: float = 1.0  # how often the workers' load is polled (it routes new sessions)


class Pipeline:
    def __init__(self, text: TextCodec, store: SessionStore, config: PipelineConfig):
        if not config.verifiers:
            raise InvalidArgument("verifiers", "at least one verifier address is required")
        self.text, self.store, self.config = text, store, config
        self.metrics = OrchestratorMetrics()  # served as /metrics on the HTTP port
        self.links: dict[tuple[str, str], LinkStats] = {}  # per drafter–verifier pair, shared by sessions
        self.acceptance = AcceptanceStats(list(config.prior_acceptance))  # global, across sessions
        self.workers = Workers(config.drafters, config.verifiers, config.drafter_retry_s, config.tls,
                               config.resolve_s, config.poll_s)
        self.workers.auth = [("authorization", f"Bearer {config.auth_token}")] if config.auth_token else []
        self.lease = RunLease(store)
        self.rounds = WorkerRounds(self.workers, config, self.metrics, self.lease)
        self.admission = Admission(text, store, config, self.metrics)

    async def open(self, call: GenerateCall) -> SessionRun:
        """Validate and create (or load) the session: every error is raised here, before any work."""
        return await self.admission.open(call)

    # ------------------------------------------------------------------ the loop

    async def run(self, run: SessionRun, time_remaining: Callable[[], float | None],
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
                await self.lease.acquire(run)
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
            self.admission.free()
            if run.place is not None:  # on every end, a client's disconnect included
                self.workers.unassign(run.session.id, run.place.drafter, run.place.verifier)
                asyncio.ensure_future(self.rounds.release(run, run.place.drafter, run.place.verifier))
            asyncio.ensure_future(self.lease.release(run))  # not awaited: Redis may be the thing that failed

    async def _rounds(self, run: SessionRun, output: GenerationOutput, time_remaining) -> AsyncIterator:
        """The round core driven over the workers: plan, draft + verify remotely, commit to Redis
        (which also renews the lease), then stream the round to the client."""
        s, spec = run.session, run.speculation
        trace_request(s, spec, self.text.name)
        place = await self.rounds.place(run)
        link = self.links.setdefault((place.drafter, place.verifier), LinkStats(
            verify_ratio=dict(self.config.verify_ratio or {}) or LinkStats().verify_ratio,
            min_rows=self.workers.load(place.verifier).min_pass_rows))
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
                r = Round(s.id, plan.step, tuple(s.prompt + output.token_ids), s.params, s.seed, len(s.prompt),
                          run.token)
                report, waited_ms = await self.rounds.round(run, plan, r, ahead=self._ahead_room(core, plan))
                outcome = core.commit(plan, report, waited_ms if plan.step > first_step else None)  # 1st: prefill
                drafted, depth = report.tree_size, report.tree_depth
                round_span.set_attributes({"specgrove.step": plan.step, "specgrove.tree_size": drafted,
                                           "specgrove.tree_depth": depth, "specgrove.plan": plan.reason,
                                           "specgrove.accepted": outcome.accepted})
            if await self.lease.commit(run, outcome, core.policy) and core.finish_reason is None:
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
        """What a worker may run ahead: the drafter the next drafted round, the verifier the next
        plain steps. 0 (nothing) unless this round is the planner's plan (drafted or plain), not a
        probe or a measurement, nor a plain step before a probe (the round run ahead is always
        taken: a probe would cost two rounds, or be lost); else the tokens the session may still
        emit, this round's included. (A round run ahead past the session's end is wasted.)"""
        if plan.shape is not None and plan.shape.size:
            by_plan = plan.reason in ("plan", "fixed")
        else:
            by_plan = plan.reason in ("plan", "load", "ar") and not core.planner.probes_within(STEPS_AHEAD)
        if not self.config.draft_ahead or not by_plan:
            return 0
        return core.output.max_new_tokens - len(core.output.token_ids)

    def _policy(self, s: Session, spec: Speculation):
        """The session's draft-length policy, with AdaEDL's λ restored from Redis when resumed."""
        cfg = self.config
        policy = make_policy(cfg.stop_policy, max(1, spec.max_len), cfg.adaedl_gamma, cfg.adaedl_lambda)
        if "lambda" in s.controller and hasattr(policy, "lam"):
            policy.lam, policy.acceptance = s.controller["lambda"], s.controller["running_acceptance"]
        return policy

    def _completion(self, s: Session, output: GenerationOutput, finish: str, n: int) -> CompletionEvent:
        return CompletionEvent(s.id, finish, output.text, s.seed, len(s.prompt), n, s.step, s.drafted, s.accepted)

    async def close(self) -> None:
        await self.workers.close()
