"""Real gRPC servers on loopback ports and a real redis-server, for the pipeline tests.

``InProcessStack`` runs the three servers in this process (the orchestrator's asyncio server on
its own event-loop thread), so the tracing test can read every span from one in-memory
exporter; the failure tests start real child processes instead (``services.roles``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from specgrove.local_redis import LocalRedis
from specgrove.tiny import build_tiny_llama


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class InProcessStack:
    def __init__(self, target, drafter, redis_url: str, *, mode: str = "chain", draft_len: int = 4,
                 link_delay_ms: float = 0.0, draft_timeout_ms: int = 5000, auth_token: str | None = None,
                 min_pass_ms: float = 0.0, **pipeline_options):
        from drafter.worker import DrafterWorker
        from orchestrator.pipeline import Pipeline, PipelineConfig
        from orchestrator.session_store import SessionStore
        from services.server import create_drafter_server, create_orchestrator_server, create_verifier_server
        from verifier.worker import VerifierWorker

        self.verifier_worker = VerifierWorker(target, min_pass_ms=min_pass_ms)
        self.verifier, vport = create_verifier_server("127.0.0.1:0", self.verifier_worker,
                                                      auth_token=auth_token, link_delay_ms=link_delay_ms)
        self.verifier.start()
        self.drafter = None
        drafters: tuple[str, ...] = ()
        if drafter is not None:
            self.drafter_worker = DrafterWorker(drafter)
            self.drafter, dport = create_drafter_server("127.0.0.1:0", self.drafter_worker, auth_token=auth_token)
            self.drafter.start()
            drafters = (f"127.0.0.1:{dport}",)
        self.loop = LoopThread()
        config = PipelineConfig(drafters, (f"127.0.0.1:{vport}",), mode=mode, draft_len=draft_len,
                                draft_timeout_ms=draft_timeout_ms, auth_token=auth_token, **pipeline_options)

        async def start():
            store = SessionStore(redis_url)
            self.pipeline = Pipeline(target, store, config)
            server, port = await create_orchestrator_server("127.0.0.1:0", self.pipeline, auth_token=auth_token)
            await server.start()
            return server, port

        self.server, port = self.loop.run(start())
        self.address = f"127.0.0.1:{port}"

    def stop(self):
        self.loop.run(self.server.stop(0))
        self.loop.run(self.pipeline.close())
        self.loop.stop()
        self.verifier.stop(0)
        if self.drafter is not None:
            self.drafter.stop(0)


@pytest.fixture(scope="session")
def redis_server():
    server = LocalRedis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_draft_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_draft_dir"), seed=1, logit_scale=20.0)


@pytest.fixture(scope="session")
def long_dir(tmp_path_factory) -> Path:
    """A tiny target that never emits EOS greedily, so generations run to max_new_tokens."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_long"), seed=0, logit_scale=20.0, suppress_eos=True)
