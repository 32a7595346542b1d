"""The orchestrator's session loop over remote workers (asyncio): validate, create or resume the
session in Redis, then rounds of draft → stream → verify until a stop rule fires.

Each round the planner picks a tree (or K = 0), the stop policy a budget; the drafter grows the
tree and streams it to the verifier, and the round's tokens are committed to Redis by step
before the client sees them. A failed or slow drafter turns the round into a plain decoding
step on the verifier (retrying the drafter after ``drafter_retry_s``); a failed verifier is
retried with backoff (a restarted one re-prefills from the context, which comes from Redis);
when every attempt fails the client gets ``UNAVAILABLE`` and can resume the session later.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import grpc

from orchestrator.acceptance import AcceptanceStats
from orchestrator.round_planner import DEFAULT_PRIOR_ACCEPTANCE, LinkStats, RoundPlanner
from orchestrator.session_store import Session, SessionStore
from orchestrator.stop_policy import make_policy
from specgrove import codec, telemetry
from specgrove.errors import InvalidArgument, OutOfRange, ResourceExhausted, SpecGroveError, Unavailable
from specgrove.generate import ChunkEvent, CompletionEvent, GenerateCall
from specgrove.metrics import OrchestratorMetrics
from specgrove.models import TextCodec
from specgrove.output import GenerationOutput
from specgrove.sampling import make_generator
from specgrove.tree import VerifyResult
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc

log = logging.getLogger(__name__)

MODES = ("ar", "chain", "tree")
MAX_DRAFT_LEN = 32
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED)


CHANNEL_OPTIONS = [  # reconnect quickly to a restarted worker (gRPC's default backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class SessionBusy(SpecGroveError):
    code = "ABORTED"


@dataclass(frozen=True)
class PipelineConfig:
    drafters: tuple[str, ...]  # host:port of drafter workers (empty: plain decoding only)
    verifiers: tuple[str, ...]  # host:port of verifier workers
    mode: str = "chain"  # default speculation mode: ar | chain | tree
    draft_len: int = 4  # chain: most draft tokens per round
    stop_policy: str = "adaedl"
    adaedl_gamma: float = 0.2
    adaedl_lambda: float = 0.5
    draft_timeout_ms: int = 5000  # a Draft call slower than this falls back to K = 0
    verify_timeout_ms: int = 30000
    drafter_retry_s: float = 2.0  # how long a failed drafter is skipped
    verifier_retry_s: float = 30.0  # how long a failing verifier is retried before UNAVAILABLE
    max_sessions: int = 64  # concurrent generations; more get RESOURCE_EXHAUSTED
    prior_acceptance: tuple[float, ...] = tuple(DEFAULT_PRIOR_ACCEPTANCE)
    verify_ratio: dict | None = None  # the verify-cost curve from a calibration profile
    auth_token: str | None = None  # sent to the workers (they check it when they have one)


@dataclass
class _Run:
    session: Session
    speculation: dict
    resume_from: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this run's lease token


class Pipeline:
    def __init__(self, text: TextCodec, store: SessionStore, config: PipelineConfig):
        if not config.verifiers:
            raise InvalidArgument("verifiers", "at least one verifier address is required")
        self.text, self.store, self.config = text, store, config
        self.metrics = OrchestratorMetrics()  # served as /metrics on the HTTP port
        self.links: dict[tuple[str, str], LinkStats] = {}  # per drafter–verifier pair, shared by sessions
        self.acceptance = AcceptanceStats(list(config.prior_acceptance))  # global, across sessions
        self._drafter_down_until: dict[str, float] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._active = 0
        self._next = 0
        self._auth = [("authorization", f"Bearer {config.auth_token}")] if config.auth_token else []

    # ------------------------------------------------------------------ validation, sessions

    def _speculation(self, raw: dict) -> dict:
        spec = {"mode": raw.get("mode") or self.config.mode, "draft_len": raw.get("draft_len", self.config.draft_len),
                "tree_budget": raw.get("tree_budget"), "tree_depth": raw.get("tree_depth")}
        if spec["mode"] not in MODES:
            raise InvalidArgument("speculation.mode", f"must be one of {', '.join(MODES)}, got {spec['mode']!r}")
        if not 0 <= spec["draft_len"] <= MAX_DRAFT_LEN:
            raise OutOfRange("speculation.draft_len", f"must be in [0, {MAX_DRAFT_LEN}], got {spec['draft_len']}")
        if spec["tree_budget"] is not None and not 1 <= spec["tree_budget"] <= 128:
            raise OutOfRange("speculation.tree_budget", f"must be in [1, 128], got {spec['tree_budget']}")
        if spec["tree_depth"] is not None and not 1 <= spec["tree_depth"] <= 12:
            raise OutOfRange("speculation.tree_depth", f"must be in [1, 12], got {spec['tree_depth']}")
        if spec["mode"] != "ar" and not self.config.drafters:
            spec["mode"] = "ar"  # no drafter deployed: plain decoding on the verifier
        return spec

    def _prompt(self, call: GenerateCall) -> list[int]:
        if call.prompt_ids is not None:
            ids = list(call.prompt_ids)
            if not ids:
                raise InvalidArgument("prompt", "token_ids must hold at least one token")
            if any(not 0 <= t < self.text.vocab_size for t in ids):
                raise OutOfRange("prompt", f"token ids must be in [0, {self.text.vocab_size})")
            return ids
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
            self._reserve()
            return _Run(session, self._speculation(session.speculation), call.resume_from)
        params = call.params.validate(vocab_size=self.text.vocab_size, max_new_tokens_limit=self.text.max_positions)
        spec = self._speculation(call.speculation)
        prompt = self._prompt(call)
        margin = {"ar": 0, "chain": spec["draft_len"]}.get(spec["mode"], spec["tree_budget"] or 64)
        needed = len(prompt) + params.max_new_tokens + margin
        if needed > self.text.max_positions:
            raise OutOfRange("prompt", f"{len(prompt)} prompt tokens + max_new_tokens {params.max_new_tokens} + "
                                       f"draft margin {margin} = {needed} exceeds the target's context of "
                                       f"{self.text.max_positions}")
        self._reserve()
        try:
            await self.store.ping()
            _, seed = make_generator(params.seed)
            session_id = await self.store.create(prompt, params, seed, spec)
            return _Run(await self.store.load(session_id), spec, 0)
        except BaseException:
            self._active -= 1
            raise

    def _reserve(self) -> None:
        """Count a generation against max_sessions (released when its run ends)."""
        if self._active >= self.config.max_sessions:
            raise ResourceExhausted(f"{self._active} generations running (limit {self.config.max_sessions}); retry later")
        self._active += 1
        self.metrics.running.set(self._active)

    # ------------------------------------------------------------------ the loop

    async def run(self, run: _Run, time_remaining: Callable[[], float | None]) -> AsyncIterator[ChunkEvent | CompletionEvent]:
        """Replay confirmed tokens from ``resume_from``, then generate until a stop rule fires.

        A client that goes away (cancel, deadline, disconnect) or a server shutdown stops the
        loop and releases the lease, leaving the session resumable; only ``Abort`` ends it as
        ``cancelled``."""
        try:
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
            self._active -= 1
            self.metrics.running.set(self._active)
            try:
                await asyncio.shield(self.store.release(run.session.id, run.token))
            except Exception:  # noqa: BLE001 - Redis may be the thing that failed
                pass

    async def _acquire(self, session_id: str, token: str) -> None:
        deadline = time.monotonic() + self.store.lease_ms / 1000 + 1.0
        while not await self.store.acquire(session_id, token):
            if time.monotonic() > deadline:
                raise SessionBusy(f"session {session_id} is being generated by another stream; retry later")
            await asyncio.sleep(0.2)

    async def _rounds(self, run: _Run, output: GenerationOutput, time_remaining) -> AsyncIterator:
        s, spec, cfg = run.session, run.speculation, self.config
        span = telemetry.trace.get_current_span()
        span.set_attributes({
            "gen_ai.operation.name": "text_completion", "gen_ai.system": "specgrove",
            "gen_ai.request.model": self.text.name, "gen_ai.request.temperature": s.params.temperature,
            "gen_ai.request.top_p": s.params.top_p, "gen_ai.request.top_k": s.params.top_k,
            "gen_ai.request.max_tokens": s.params.max_new_tokens, "gen_ai.request.seed": s.seed,
            "gen_ai.usage.input_tokens": len(s.prompt), "specgrove.session_id": s.id,
            "specgrove.mode": spec["mode"],
        })
        tree_mode = spec["mode"] == "tree"
        policy = make_policy(cfg.stop_policy, max(8, spec["tree_depth"] or 0) if tree_mode else max(1, spec["draft_len"]),
                             cfg.adaedl_gamma, cfg.adaedl_lambda)
        if "lambda" in s.controller and hasattr(policy, "lam"):
            policy.lam, policy.acceptance = s.controller["lambda"], s.controller["running_acceptance"]
        drafter, verifier = self._placement(s.id)
        link = self.links.setdefault((drafter, verifier), LinkStats(verify_ratio=dict(cfg.verify_ratio or {}) or
                                                                    LinkStats().verify_ratio))
        planner = RoundPlanner(spec["mode"], link, AcceptanceStats(self.acceptance.vector()),
                               draft_len=spec["draft_len"], fixed_size=spec["tree_budget"],
                               fixed_depth=spec["tree_depth"])
        tokens = list(s.tokens)
        step, drafted_total, accepted_total = s.step, s.drafted, s.accepted
        started = time.perf_counter()
        first_at = None
        finish = None
        if await self.store.cancelled(s.id):  # later rounds learn it from the commit
            finish = "cancelled"
        first_round = True  # its passes include prefill: not a sample of per-round costs
        while output.finish_reason is None and finish is None:
            remaining = time_remaining()
            if remaining is not None and remaining < 2 * max(link.plain_ms or 0, 50) / 1000:
                finish = "time_limit"
                break
            choice = planner.next()
            budget = policy.budget()
            room = s.params.max_new_tokens - len(output.token_ids) - 1
            shape = choice.shape
            if shape is not None and spec["mode"] == "chain":
                shape = shape.chain(min(budget.max_len, room)) if min(budget.max_len, room) > 0 else None
            with telemetry.tracer().start_as_current_span("round") as round_span:
                result, drafted, depth = await self._round(s, step + 1, s.prompt + tokens, shape, budget,
                                                           drafter, verifier, link, measure=not first_round)
                round_span.set_attributes({"specgrove.step": step + 1, "specgrove.tree_size": drafted,
                                           "specgrove.tree_depth": depth, "specgrove.plan": choice.reason,
                                           "specgrove.accepted": len(result.accepted_tokens)})
            first_round = False
            emitted = []
            for token in result.accepted_tokens + [result.next_token]:
                emitted.append(token)
                if output.add(token):
                    break
            accepted = len(result.accepted_tokens)
            if drafted:
                policy.observe(depth if tree_mode else drafted, accepted)
                planner.observe(result)
                self.acceptance.observe(result)
            committed, cancelled = await self.store.append(s.id, step + 1, emitted, policy.state(), drafted,
                                                           accepted, run.token)  # also renews the lease
            if committed != step + 1:
                raise SessionBusy(f"session {s.id}: round {step + 1} was committed by another stream")
            if cancelled and output.finish_reason is None:
                finish = "cancelled"  # Abort: this round's tokens still reach the client
            step += 1
            index = len(tokens)
            tokens += emitted
            drafted_total += drafted
            accepted_total += accepted
            self.metrics.record_round(drafted, accepted, len(emitted))
            if first_at is None:
                first_at = time.perf_counter()
                self.metrics.ttft.observe(first_at - started)
            yield ChunkEvent(s.id, index, emitted, output.release(), step, drafted, accepted, drafted, depth)
        finish = finish or output.finish_reason
        if first_at is not None and len(tokens) > 1:
            self.metrics.tpot.observe((time.perf_counter() - first_at) / max(1, len(tokens) - 1))
        self.metrics.record_finish(finish, len(s.prompt), time.perf_counter() - started)
        await self.store.finish(s.id, finish)
        asyncio.ensure_future(self._release_workers(s.id, drafter, verifier))
        s.tokens, s.step, s.drafted, s.accepted = tokens, step, drafted_total, accepted_total
        span.set_attributes({"gen_ai.usage.output_tokens": len(tokens), "gen_ai.response.finish_reasons": [finish]})
        yield self._completion(s, output, finish, len(tokens))

    def _completion(self, s: Session, output: GenerationOutput, finish: str, n: int) -> CompletionEvent:
        return CompletionEvent(s.id, finish, output.text, s.seed, len(s.prompt), n, s.step, s.drafted, s.accepted)

    # ------------------------------------------------------------------ one round on the workers

    def _placement(self, session_id: str) -> tuple[str, str]:
        self._next += 1
        drafters = self.config.drafters or ("",)
        return drafters[self._next % len(drafters)], self.config.verifiers[self._next % len(self.config.verifiers)]

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return self._channels[address]

    async def _round(self, s: Session, step: int, context: list[int], shape, budget, drafter: str, verifier: str,
                     link: LinkStats, measure: bool = True) -> tuple[VerifyResult, int, int]:
        """(result, draft tokens proposed, tree depth). Falls back to K = 0 when the drafter fails."""
        round_pb = speculate_pb2.RoundContext(session_id=s.id, step=step, context=codec.pack_ids(context),
                                              sampling=codec.params_to_pb(s.params), seed=s.seed,
                                              output_start=len(s.prompt))
        if shape is not None and shape.size and drafter and time.monotonic() >= self._drafter_down_until.get(drafter, 0):
            request = speculate_pb2.DraftRequest(round=round_pb, plan=codec.budget_to_pb(budget, list(shape.parents)),
                                                 verifier=verifier, verify_timeout_ms=self.config.verify_timeout_ms)
            stub = speculate_pb2_grpc.DrafterStub(self._channel(drafter))
            t0 = time.perf_counter()
            try:
                reply = await stub.Draft(request, timeout=self.config.draft_timeout_ms / 1000,
                                         metadata=telemetry.inject_metadata() + self._auth)
            except grpc.aio.AioRpcError as err:  # whatever the drafter's failure, the verifier can go on alone
                log.warning("drafter %s failed (%s: %s); plain decoding, retrying it in %.1fs",
                            drafter, err.code().name, err.details(), self.config.drafter_retry_s)
                telemetry.trace.get_current_span().add_event("drafter failed", {"code": err.code().name})
                self._drafter_down_until[drafter] = time.monotonic() + self.config.drafter_retry_s
            else:
                rtt = (time.perf_counter() - t0) * 1000
                if measure:
                    link.observe_tree(rtt, reply.timing.draft_ms, reply.timing.verify_ms, reply.tree_size,
                                      reply.tree_depth, reply.timing.tree_bytes)
                return codec.result_from_pb(reply), reply.tree_size, reply.tree_depth
        stub = speculate_pb2_grpc.VerifierStub(self._channel(verifier))
        error, attempt = None, 0
        give_up = time.monotonic() + self.config.verifier_retry_s
        while time.monotonic() < give_up:
            t0 = time.perf_counter()
            try:
                reply = await stub.Decode(round_pb, timeout=self.config.verify_timeout_ms / 1000,
                                          metadata=telemetry.inject_metadata() + self._auth)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE:
                    raise
                error, attempt = err, attempt + 1
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            if measure:
                link.observe_plain((time.perf_counter() - t0) * 1000, reply.timing.verify_ms)
            return codec.result_from_pb(reply), 0, 0
        last = f"{error.code().name}: {error.details()}" if error else "no attempt"
        raise Unavailable(f"verifier {verifier} unreachable for {self.config.verifier_retry_s:.0f}s ({last}); "
                          f"resume session {s.id} later")

    async def _release_workers(self, session_id: str, drafter: str, verifier: str) -> None:
        """Free the finished session's KV caches on the workers (best effort; LRU evicts otherwise)."""
        request = speculate_pb2.ReleaseRequest(session_id=session_id)
        calls = [speculate_pb2_grpc.VerifierStub(self._channel(verifier)).Release(request, timeout=2, metadata=self._auth)]
        if drafter:
            calls.append(speculate_pb2_grpc.DrafterStub(self._channel(drafter)).Release(request, timeout=2,
                                                                                          metadata=self._auth))
        await asyncio.gather(*calls, return_exceptions=True)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
