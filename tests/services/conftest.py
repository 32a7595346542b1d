"""Real gRPC servers on loopback ports and a real redis-server, for the pipeline tests.

``InProcessStack`` runs the three servers in this process (the orchestrator's asyncio server on
its own event-loop thread), so the tracing test can read every span from one in-memory
exporter; the failure tests start real child processes instead (``services.roles``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from specgrove.config import GUESS_COUNT
from specgrove.local_redis import LocalRedis
from specgrove.tiny import build_tiny_llama


def in_memory_spans():
    """An in-memory exporter of every span finished from now on in this process. OpenTelemetry
    keeps the first tracer provider a process installs, so a later test adds its exporter to it."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from specgrove import telemetry

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        telemetry.setup("specgrove-test", {}, span_exporter=exporter)
    return exporter


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
                 link_delay_ms: float = 0.0, draft_timeout_ms: int = 15000, auth_token: str | None = None,
                 min_pass_ms: float = 0.0, tls=None, verifiers: int = 1, drafters: int = 1, draft_min_pass_ms: float = 0.0,
                 guess_count: int = GUESS_COUNT, guess_width: int | None = None, redis_retry_s: float = 10.0,
                 verifier_pass_ms: tuple[float, ...] | None = None, verifier_link_ms: tuple[float, ...] | None = None,
                 name_verifiers=tuple, colocated: bool = False, **pipeline_options):
        """tls: one ``TlsConfig`` for every role (its servers, and its channels to the others);
        verifiers / drafters: how many servers of each (the first is ``verifier`` / ``verifier_worker``,
        ``drafter`` / ``drafter_worker``; all in ``verifiers`` / ``drafter_servers``, ``*_workers``).
        draft_timeout_ms is 3x the served default: every role here shares one compute thread
        (specgrove.compute), so a drafter's cold first round (a grammar's first masks) can queue
        behind the verifier's, which separate processes never do; on a loaded CI core that
        passed 5 s. verifier_pass_ms: each verifier's own min_pass_ms; name_verifiers(addresses):
        the verifiers as the orchestrator names them (default: each address); verifier_link_ms:
        each verifier's own delay of the drafters' messages to it (default ``link_delay_ms``).
        colocated: each verifier is a worker server (``serve worker``) holding a drafter too, named
        to the orchestrator as its drafters (``drafters`` unused; ``drafter_workers`` are theirs)."""
        from drafter.guess import GuessSelection
        from drafter.worker import DrafterWorker
        from orchestrator.pipeline import Pipeline, PipelineConfig
        from orchestrator.session_store import SessionStore
        from services.server import (
            create_drafter_server,
            create_orchestrator_server,
            create_verifier_server,
            create_worker_server,
        )
        from verifier.worker import VerifierWorker

        self.verifier_workers, self.verifiers, addresses = [], [], []
        self.drafter_workers, self.drafter_servers, drafter_addresses = [], [], []
        for i in range(verifiers):
            worker = VerifierWorker(target, min_pass_ms=verifier_pass_ms[i] if verifier_pass_ms else min_pass_ms)
            if colocated:
                drafts = DrafterWorker(drafter, min_pass_ms=draft_min_pass_ms)
                server, vport = create_worker_server("127.0.0.1:0", worker, drafts, auth_token=auth_token, tls=tls,
                                                     link_delay_ms=link_delay_ms)
                self.drafter_workers.append(drafts)
                drafter_addresses.append(f"127.0.0.1:{vport}")
            else:
                server, vport = create_verifier_server(
                    "127.0.0.1:0", worker, auth_token=auth_token, tls=tls,
                    link_delay_ms=verifier_link_ms[i] if verifier_link_ms else link_delay_ms)
            server.start()
            self.verifier_workers.append(worker)
            self.verifiers.append(server)
            addresses.append(f"127.0.0.1:{vport}")
        names = tuple(name_verifiers(addresses))  # as the orchestrator and the drafters name them
        self.verifier_worker, self.verifier = self.verifier_workers[0], self.verifiers[0]
        self.verifier_address, self.drafter_address = addresses[0], None
        self.drafter = None
        for _ in range(drafters if drafter is not None and not colocated else 0):
            worker = DrafterWorker(drafter, min_pass_ms=draft_min_pass_ms,
                                   guesses=GuessSelection(guess_count, guess_width))
            server, dport = create_drafter_server("127.0.0.1:0", worker, auth_token=auth_token, tls=tls,
                                                  verifiers=names, link_delay_ms=link_delay_ms)
            server.start()
            self.drafter_workers.append(worker)
            self.drafter_servers.append(server)
            drafter_addresses.append(f"127.0.0.1:{dport}")
        if drafter_addresses:
            self.drafter_worker, self.drafter = self.drafter_workers[0], (self.drafter_servers or self.verifiers)[0]
            self.drafter_address = drafter_addresses[0]
        drafters = tuple(drafter_addresses)
        self.loop = LoopThread()
        # chains of K exactly: with tiny models a draft costs about what the target does, so goodput
        # sizing would hinge on timings (the planner's own tests cover it; `specgrove up` turns it on)
        pipeline_options.setdefault("goodput", False)
        config = PipelineConfig(drafters, names, mode=mode, draft_len=draft_len,
                                draft_timeout_ms=draft_timeout_ms, auth_token=auth_token, tls=tls, **pipeline_options)

        async def start():
            store = SessionStore(redis_url, retry_s=redis_retry_s)
            self.pipeline = Pipeline(target, store, config)
            server, port = await create_orchestrator_server("127.0.0.1:0", self.pipeline, auth_token=auth_token,
                                                            tls=tls)
            await server.start()
            return server, port

        self.server, port = self.loop.run(start())
        self.address = f"127.0.0.1:{port}"

    def stop(self):
        self.loop.run(self.server.stop(0))
        self.loop.run(self.pipeline.close())
        self.loop.stop()
        for server in self.verifiers:
            server.stop(0)
        for server in self.drafter_servers:
            server.stop(0)


@pytest.fixture(scope="session")
def redis_server():
    server = LocalRedis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    from tests.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tiny_draft_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_draft_dir"), seed=1, logit_scale=20.0)


@pytest.fixture(scope="session")
def long_dir(tmp_path_factory) -> Path:
    """A tiny target that never emits EOS greedily, so generations run to max_new_tokens."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_long"), seed=0, logit_scale=20.0, suppress_eos=True)
