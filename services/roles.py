"""Run one role until SIGINT/SIGTERM (``specgrove serve ROLE``), and ``specgrove up``: a local
Redis plus the three roles as child processes on loopback, stopped together on Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from specgrove.config import GUESS_COUNT
from specgrove.limits import DEFAULT_LIMITS, Limits
from specgrove.tls import TlsConfig

log = logging.getLogger(__name__)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _secured(tls: TlsConfig | None) -> str:
    if tls is None or not tls.serves_tls:
        return ""
    return " (TLS, client certificates required)" if tls.client_ca else " (TLS)"


def _metrics_port(registry, host: str, port: int | None) -> None:
    if port is not None:
        from specgrove.metrics import serve_metrics

        _, bound = serve_metrics(registry, host, port)
        print(f"metrics on http://{host}:{bound}/metrics", flush=True)


def serve_verifier(host: str, port: int, target: str, cache_dir: Path, auth_token: str | None,
                   link_delay_ms: float = 0.0, min_pass_ms: float = 0.0, metrics_port: int | None = None,
                   tls: TlsConfig | None = None, limits: Limits = DEFAULT_LIMITS,
                   max_kv_tokens: int | None = None, max_batch: int = 16) -> None:
    from services.server import create_verifier_server
    from specgrove.models import load_model
    from verifier.worker import VerifierWorker

    worker = VerifierWorker(load_model(target, cache_dir), min_pass_ms=min_pass_ms, max_kv_tokens=max_kv_tokens,
                            max_batch=max_batch)
    server, bound = create_verifier_server(f"{host}:{port}", worker, auth_token, link_delay_ms, tls=tls,
                                           limits=limits)
    _metrics_port(worker.metrics.registry, host, metrics_port)
    server.start()
    print(f"verifier serving {target} on {host}:{bound}{_secured(tls)}", flush=True)
    _wait_for_signal()
    server.stop(grace=2).wait()


def serve_drafter(host: str, port: int, draft: str, target: str, cache_dir: Path, auth_token: str | None,
                  metrics_port: int | None = None, tls: TlsConfig | None = None, verifiers: tuple[str, ...] = (),
                  limits: Limits = DEFAULT_LIMITS, link_delay_ms: float = 0.0, max_batch: int = 16,
                  min_pass_ms: float = 0.0, guess_count: int = GUESS_COUNT, guess_width: int | None = None) -> None:
    """verifiers: the only verifiers its Draft calls may stream to (and send the token to); empty: any.
    max_batch: the most sessions whose draft levels share one pass; min_pass_ms: each such pass
    lasts at least this long (a draft on a GPU); guess_count: guessed draft-ahead's guesses per
    round, the most likely verdicts; guess_width: instead, this many per acceptance length."""
    from drafter.factory import make_drafter
    from drafter.worker import DrafterWorker
    from services.server import create_drafter_server
    from specgrove.models import load_text_codec

    text = load_text_codec(target, cache_dir)
    drafter, model = make_drafter(draft, text, cache_dir)
    worker = DrafterWorker(drafter, text=text, max_batch=max_batch, min_pass_ms=min_pass_ms, guess_count=guess_count,
                           guess_width=guess_width)
    server, bound = create_drafter_server(f"{host}:{port}", worker, model, auth_token, tls=tls, verifiers=verifiers,
                                          limits=limits, link_delay_ms=link_delay_ms)
    if not verifiers:
        log.warning("drafter: no --verifier given: it streams to whichever verifier a Draft request names")
    _metrics_port(worker.metrics.registry, host, metrics_port)
    server.start()
    print(f"drafter serving {draft} on {host}:{bound}{_secured(tls)}", flush=True)
    _wait_for_signal()
    server.stop(grace=2).wait()


@dataclass
class OrchestratorOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    target: str = "smollm2"
    drafters: list[str] = field(default_factory=list)
    verifiers: list[str] = field(default_factory=list)
    redis_url: str = "redis://127.0.0.1:6379/0"
    mode: str = "chain"
    draft_len: int = 4
    stop_policy: str = "adaedl"
    draft_timeout_ms: int = 5000
    session_ttl_s: int = 3600
    redis_retry_s: float = 10.0  # how long every session-store call rides through a Redis outage
    profile: str | None = None
    auth_token: str | None = None
    http_port: int | None = None  # the OpenAI-compatible HTTP door and /metrics (None = off)
    tls: TlsConfig | None = None  # its servers (gRPC and HTTP) and its channels to the workers
    limits: Limits = DEFAULT_LIMITS  # message size, prompt ids, stop strings, streams per client
    max_sessions: int = 64  # concurrent generations; more queue for queue_timeout_s, then RESOURCE_EXHAUSTED
    queue_timeout_s: float = 2.0
    draft_ahead: bool = True  # drafters run the next round as soon as they hold this one's verdict
    guess_ahead: bool = False  # with draft_ahead, on chains: drafters also guess the verdict (drafter/guess.py)


async def _orchestrator(options: OrchestratorOptions, cache_dir: Path, ready: asyncio.Event | None = None):
    from orchestrator.pipeline import Pipeline, PipelineConfig
    from orchestrator.tree_sizing import CostProfile
    from orchestrator.session_store import SessionStore
    from services.server import create_orchestrator_server
    from specgrove.models import load_text_codec

    ratio = None
    if options.profile:
        profile = CostProfile.from_json(Path(options.profile).read_text())
        ratio = {n: v / profile.verify_ms[1] for n, v in profile.verify_ms.items()}
    config = PipelineConfig(tuple(options.drafters), tuple(options.verifiers), mode=options.mode,
                            draft_len=options.draft_len, stop_policy=options.stop_policy,
                            draft_timeout_ms=options.draft_timeout_ms, verify_ratio=ratio,
                            auth_token=options.auth_token, tls=options.tls, max_sessions=options.max_sessions,
                            queue_timeout_s=options.queue_timeout_s, draft_ahead=options.draft_ahead,
                            guess_ahead=options.guess_ahead)
    store = SessionStore(options.redis_url, ttl_s=options.session_ttl_s, retry_s=options.redis_retry_s)
    pipeline = Pipeline(load_text_codec(options.target, cache_dir), store, config)
    server, bound = await create_orchestrator_server(f"{options.host}:{options.port}", pipeline,
                                                     auth_token=options.auth_token, tls=options.tls,
                                                     limits=options.limits)
    runner = None
    if options.http_port is not None:
        from services.http import start_http
        from specgrove.tls import ssl_context

        runner, http_port = await start_http(pipeline, options.host, options.http_port,
                                             (pipeline.text.name, options.target), options.auth_token,
                                             ssl_context(options.tls))
        scheme = "https" if options.tls and options.tls.serves_tls else "http"
        print(f"OpenAI-compatible HTTP on {scheme}://{options.host}:{http_port}/v1 (metrics: /metrics)", flush=True)
    await server.start()
    print(f"orchestrator on {options.host}:{bound}{_secured(options.tls)} (drafters {options.drafters}, verifiers {options.verifiers}, "
          f"redis {options.redis_url})", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if runner is not None:
        await runner.cleanup()
    await server.stop(grace=2)
    await pipeline.close()
    await store.close()


def serve_orchestrator(options: OrchestratorOptions, cache_dir: Path) -> None:
    asyncio.run(_orchestrator(options, cache_dir))


# ---------------------------------------------------------------------- specgrove up

def wait_healthy(address: str, timeout: float = 300.0, process: subprocess.Popen | None = None,
                 tls: TlsConfig | None = None) -> None:
    """Block until address answers grpc.health.v1 with SERVING (over TLS when ``tls.ca`` is set)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from specgrove.tls import open_channel

    deadline = time.monotonic() + timeout
    with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server for {address} exited with {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(f"{address} not healthy after {timeout:.0f}s")


@dataclass
class Stack:
    """A running local deployment: Redis + verifier + drafter + orchestrator processes."""

    address: str
    redis: object
    ports: dict[str, int]
    commands: dict[str, list[str]]
    env: dict[str, str]
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def tls(self) -> TlsConfig:
        """What the roles read from the environment: TLS when SPECGROVE_TLS_* are set in ``env``."""
        return TlsConfig.from_env(self.env)

    def start(self, role: str, wait: bool = True) -> None:
        out = open(self.log_dir / f"{role}.log", "a") if self.log_dir else subprocess.DEVNULL  # noqa: SIM115
        self.processes[role] = subprocess.Popen(self.commands[role], env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy(role)

    def wait_healthy(self, role: str) -> None:
        """Block until ``role`` answers its health check; if it exits first, the error carries the
        end of its log."""
        try:
            wait_healthy(f"127.0.0.1:{self.ports[role]}", process=self.processes[role], tls=self.tls)
        except RuntimeError as error:
            log_file = self.log_dir / f"{role}.log" if self.log_dir else None
            tail = log_file.read_text(errors="replace").splitlines()[-15:] if log_file and log_file.is_file() else []
            raise RuntimeError(f"{role}: {error}" + "".join(f"\n  | {line}" for line in tail)) from None

    def kill(self, role: str) -> None:
        """SIGKILL: the role dies without any clean-up (a crash)."""
        proc = self.processes[role]
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.redis is not None:
            self.redis.stop()


def role_command(role: str, port: int, cache_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "specgrove_apps.cli", "--cache-dir", str(cache_dir), "serve", role, "--port", str(port),
            *extra]


# OpenMP threads of a worker spin this many times for the next parallel region before they sleep
# (libgomp's GOMP_SPINCOUNT; its default is 300,000). The roles share the machine's cores on
# loopback, taking turns: the drafter draws levels while the verifier waits, then the other way.
# - Sleeping at once (OMP_WAIT_POLICY=PASSIVE, used before) makes every kernel of a pass pay a
#   wake-up: a served verify pass of a 5-token chain took 158 ms against 118 ms with this count.
# - The default count keeps a role's threads spinning for milliseconds after its work ends, on
#   the cores the other role now needs: that pass took 134 ms.
# - 10,000 spans the gaps between one pass's kernels and then yields. Measured on the 2-core CPU
#   (HumanEval 8 × 64, one run each, 2026-11-24): grpc-chain-k4 12.1 → 15.9 tok/s with one client
#   and 29.2 → 46.1 with eight; in process it matches the default.
WORKER_SPIN_COUNT = "10000"


def quiet_omp(env) -> None:
    """Set a worker's OpenMP waiting (WORKER_SPIN_COUNT) in ``env`` (a dict or ``os.environ``),
    unless the caller chose one (OMP_WAIT_POLICY or GOMP_SPINCOUNT already set). It must be set
    before torch loads: libgomp reads it once."""
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = WORKER_SPIN_COUNT


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A child role's environment: its OpenMP threads spin briefly, then sleep (``quiet_omp``)."""
    env = dict(os.environ if environ is None else environ)
    quiet_omp(env)
    return env


def start_stack(port: int, target: str, draft: str, cache_dir: Path, redis_url: str | None = None,
                mode: str = "chain", draft_len: int = 4, link_delay_ms: float = 0.0, log_dir: Path | None = None,
                extra_orchestrator: tuple[str, ...] = (), extra_verifier: tuple[str, ...] = (),
                guess_count: int = GUESS_COUNT, guess_width: int | None = None, env: dict[str, str] | None = None,
                http_port: int | None = None, redis_dir: Path | None = None,
                prefixes: dict[str, tuple[str, ...]] | None = None, verifiers: int = 1, drafters: int = 1,
                second_orchestrator: tuple[str, ...] | None = None) -> Stack:
    """http_port: the orchestrator's OpenAI-compatible door (0 = a free port, None = none). The
    workers serve /metrics on free ports (``stack.ports``: verifier_metrics, drafter_metrics).
    redis_dir: the local Redis's append-only data (kept across runs; default a fresh directory).
    guess_count / guess_width: the drafter's guesses when the orchestrator guesses ahead.
    prefixes: per role, a command it runs under, e.g. ``{"drafter": ("nice", "-n", "19")}``,
    ``chrt --idle 0`` or ``taskset -c 1`` (benchmarks: on shared cores, a drafter that takes only
    the CPU the verifier leaves, or each role on its own core, as roles on their own machines
    never slow each other).
    verifiers / drafters: how many of each (roles ``verifier``, ``verifier2``, ...; every
    orchestrator and drafter is given them all). second_orchestrator: start ``orchestrator2`` too,
    on the same workers and Redis, with these extra arguments (e.g. ``("--guess-ahead",)``): a
    session resumes on either."""
    from specgrove.local_redis import LocalRedis, free_port

    redis = None
    if not redis_url:
        redis = LocalRedis.shared(redis_dir) if redis_dir else LocalRedis()
        redis_url = redis.url

    def names(role: str, n: int) -> list[str]:
        return [role if i == 0 else f"{role}{i + 1}" for i in range(n)]

    verifier_names, drafter_names = names("verifier", verifiers), names("drafter", drafters)
    ports = {"orchestrator": port or free_port()}
    for name in (*verifier_names, *drafter_names):
        ports[name], ports[f"{name}_metrics"] = free_port(), free_port()
    http = ()
    if http_port is not None:
        ports["http"] = http_port or free_port()
        http = ("--http-port", str(ports["http"]))
    prefixes = prefixes or {}
    to_verifiers = [arg for name in verifier_names for arg in ("--verifier", f"127.0.0.1:{ports[name]}")]
    to_drafters = [arg for name in drafter_names for arg in ("--drafter", f"127.0.0.1:{ports[name]}")]
    commands = {}
    for name in verifier_names:
        commands[name] = [*prefixes.get("verifier", ()), *role_command(
            "verifier", ports[name], cache_dir, "--target", target, "--link-delay-ms", str(link_delay_ms),
            "--metrics-port", str(ports[f"{name}_metrics"]), *extra_verifier)]
    for name in drafter_names:
        commands[name] = [*prefixes.get("drafter", ()), *role_command(
            "drafter", ports[name], cache_dir, "--draft", draft, "--target", target,
            "--metrics-port", str(ports[f"{name}_metrics"]), "--link-delay-ms", str(link_delay_ms),
            *to_verifiers,  # the only verifiers it may stream to
            "--guess-count", str(guess_count), *(("--guess-width", str(guess_width)) if guess_width is not None else ()))]

    def orchestrator(at: int, *extra: str) -> list[str]:
        return [*prefixes.get("orchestrator", ()), *role_command(
            "orchestrator", at, cache_dir, "--target", target, "--redis-url", redis_url, *to_drafters, *to_verifiers,
            "--mode", mode, "--draft-len", str(draft_len), *extra)]

    commands["orchestrator"] = orchestrator(ports["orchestrator"], *http, *extra_orchestrator)
    if second_orchestrator is not None:
        ports["orchestrator2"] = free_port()
        commands["orchestrator2"] = orchestrator(ports["orchestrator2"], *second_orchestrator)
    stack = Stack(f"127.0.0.1:{ports['orchestrator']}", redis, ports, commands, worker_env(env), log_dir)
    try:
        for role in commands:  # workers first, then the orchestrators
            stack.start(role, wait=False)
        for role in commands:
            stack.wait_healthy(role)
    except BaseException:
        stack.stop()
        raise
    return stack
