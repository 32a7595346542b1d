"""Admission: a request validated once, its session created in (or loaded from) Redis, and its
place among the running generations (at most ``max_sessions``; later ones queue, first come
first served, then get RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from orchestrator.rounds import Speculation, check_request
from orchestrator.session_run import SessionRun
from orchestrator.session_store import SessionStore
from specgrove.errors import InvalidArgument, OutOfRange, ResourceExhausted
from specgrove.generate import GenerateCall
from specgrove.metrics import OrchestratorMetrics
from specgrove.models import TextCodec
from specgrove.sampling import make_generator


class Admission:
    def __init__(self, text: TextCodec, store: SessionStore, config, metrics: OrchestratorMetrics):
        self.text, self.store, self.config, self.metrics = text, store, config, metrics
        self._active = 0
        self._slots = asyncio.Semaphore(config.max_sessions)  # FIFO: waiters are served in order

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

    async def open(self, call: GenerateCall) -> SessionRun:
        """Validate and create (or load) the session: every error is raised here, before any work."""
        if call.session_id:
            session = await self.store.load(call.session_id)
            if call.resume_from > len(session.tokens):
                raise OutOfRange("resume_from", f"session {session.id} has {len(session.tokens)} tokens, "
                                                f"got resume_from={call.resume_from}")
            await self._reserve()
            return SessionRun(session, self._speculation(session.speculation), call.resume_from)
        spec = self._speculation(call.speculation)
        prompt = self._prompt(call)
        params = check_request(prompt, call.params, spec, self.text.vocab_size, self.text.max_positions)  # the one check
        spec = spec.for_request(params)
        await self._reserve()
        try:
            _, seed = make_generator(params.seed)
            session_id = await self.store.create(prompt, params, seed, spec.to_dict())
            return SessionRun(await self.store.load(session_id), spec, 0)
        except BaseException:
            self.free()
            raise

    async def _reserve(self) -> None:
        """Count a generation against max_sessions, first come first served: wait up to
        ``queue_timeout_s`` for a slot, then RESOURCE_EXHAUSTED. ``free`` gives it back."""
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

    def free(self) -> None:
        self._active -= 1
        self._slots.release()
        self.metrics.running.set(self._active)
