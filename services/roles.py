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

from specgrove.config import GUESS_COUNT, MAX_BATCH
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


@dataclass(frozen=True)
class VerifierOptions:
    """What ``specgrove serve verifier`` serves, and how."""

    host: str
    port: int
    target: str
    auth_token: str | None = None
    link_delay_ms: float = 0.0
    min_pass_ms: float = 0.0  # every verify pass lasts at least this long (emulates a GPU-bound target)
    metrics_port: int | None = None  # /metrics on this port (None = off)
    tls: TlsConfig | None = None
    limits: Limits = DEFAULT_LIMITS
    max_kv_tokens: int | None = None
    max_batch: int = MAX_BATCH
    drain_s: float = 30.0  # on SIGTERM: how long its sessions may take to move away or end


def serve_verifier(options: VerifierOptions, cache_dir: Path) -> None:
    from services.server import create_verifier_server, drain
    from specgrove.models import load_model
    from verifier.worker import VerifierWorker

    o = options
    worker = VerifierWorker(load_model(o.target, cache_dir), min_pass_ms=o.min_pass_ms, max_kv_tokens=o.max_kv_tokens,
                            max_batch=o.max_batch)
    server, bound = create_verifier_server(f"{o.host}:{o.port}", worker, o.auth_token, o.link_delay_ms, tls=o.tls,
                                           limits=o.limits)
    _metrics_port(worker.metrics.registry, o.host, o.metrics_port)
    server.start()
    print(f"verifier serving {o.target} on {o.host}:{bound}{_secured(o.tls)}", flush=True)
    _wait_for_signal()
    drain(server, worker, o.drain_s)


@dataclass(frozen=True)
class DrafterOptions:
    """What ``specgrove serve drafter`` serves, and how.

    verifiers: the only verifiers its Draft calls may stream to (and send the token to); empty: any.
    max_batch: the most sessions whose draft levels share one pass; min_pass_ms: each such pass
    lasts at least this long (a draft on a GPU); guess_count: guessed draft-ahead's guesses per
    round, the most likely verdicts; guess_width: instead, this many per acceptance length."""

    host: str
    port: int
    draft: str
    target: str  # its tokenizer
    auth_token: str | None = None
    metrics_port: int | None = None  # /metrics on this port (None = off)
    tls: TlsConfig | None = None
    verifiers: tuple[str, ...] = ()
    limits: Limits = DEFAULT_LIMITS
    link_delay_ms: float = 0.0
    max_batch: int = MAX_BATCH
    min_pass_ms: float = 0.0
    guess_count: int = GUESS_COUNT
    guess_width: int | None = None
    drain_s: float = 30.0  # on SIGTERM: how long its rounds may take to end


def serve_drafter(options: DrafterOptions, cache_dir: Path) -> None:
    from drafter.factory import make_drafter
    from drafter.guess import GuessSelection
    from drafter.worker import DrafterWorker
    from services.server import create_drafter_server, drain
    from specgrove.models import load_text_codec

    o = options
    text = load_text_codec(o.target, cache_dir)
    drafter, model = make_drafter(o.draft, text, cache_dir)
    worker = DrafterWorker(drafter, text=text, max_batch=o.max_batch, min_pass_ms=o.min_pass_ms,
                           guesses=GuessSelection(o.guess_count, o.guess_width))
    server, bound = create_drafter_server(f"{o.host}:{o.port}", worker, model, o.auth_token, tls=o.tls,
                                          verifiers=o.verifiers, limits=o.limits, link_delay_ms=o.link_delay_ms)
    if not o.verifiers:
        log.warning("drafter: no --verifier given: it streams to whichever verifier a Draft request names")
    _metrics_port(worker.metrics.registry, o.host, o.metrics_port)
    server.start()
    print(f"drafter serving {o.draft} on {o.host}:{bound}{_secured(o.tls)}", flush=True)
    _wait_for_signal()
    drain(server, worker, o.drain_s)


@dataclass(frozen=True)
class WorkerOptions:
    """What ``specgrove serve worker`` serves: a drafter and a verifier in one process, on one
    port. The verifier's options are ``verifier``'s (its host, port, TLS, limits and drain are
    the worker's); the drafter's are its draft and batching."""

    verifier: VerifierOptions
    draft: str
    draft_max_batch: int = MAX_BATCH


def serve_worker(options: WorkerOptions, cache_dir: Path) -> None:
    from drafter.factory import make_drafter
    from drafter.worker import DrafterWorker
    from services.server import ProcessWorkers, create_worker_server, drain
    from specgrove.metrics import registry_by_role
    from specgrove.models import load_model, load_text_codec
    from verifier.worker import VerifierWorker

    o = options.verifier
    verifier = VerifierWorker(load_model(o.target, cache_dir), min_pass_ms=o.min_pass_ms,
                              max_kv_tokens=o.max_kv_tokens, max_batch=o.max_batch)
    text = load_text_codec(o.target, cache_dir)
    draft, model = make_drafter(options.draft, text, cache_dir)
    drafter = DrafterWorker(draft, text=text, max_batch=options.draft_max_batch)
    server, bound = create_worker_server(f"{o.host}:{o.port}", verifier, drafter, model, o.auth_token, tls=o.tls,
                                         limits=o.limits, link_delay_ms=o.link_delay_ms)
    if o.auth_token:  # as a drafter given no --verifier: the token goes to whichever verifier a request names
        log.warning("worker: its drafter verifies on any verifier a Draft request names (its own in process)")
    _metrics_port(registry_by_role(drafter=drafter.metrics.registry, verifier=verifier.metrics.registry), o.host,
                  o.metrics_port)
    server.start()
    print(f"worker serving {o.target} (verifier) and {options.draft} (drafter) on {o.host}:{bound}{_secured(o.tls)}",
          flush=True)
    _wait_for_signal()
    drain(server, ProcessWorkers(drafter, verifier), o.drain_s)


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
    http_port: int | None = None  # the OpenAI-compatible HTTP API and /metrics (None = off)
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
# - Sleeping at once (OMP_WAIT_POLICY=PASSIVE) makes every kernel of a pass pay a wake-up.
# - The default count keeps a role's threads spinning for milliseconds after its work ends, on
#   the cores the other role now needs.
# - 10,000 spans the gaps between one pass's kernels and then yields: served chains were faster
#   with it at one client and at eight, and in process it matches the default (the measurements:
#   docs/bench/history.md).
WORKER_SPIN_COUNT = "10000"


# On one machine the orchestrators yield the CPU to the workers. Their work for a round (the
# commit to Redis, the stream to the client, the next request) overlaps the workers' next pass
# (draft-ahead, steps ahead), and a pass whose threads fill the cores stalls whenever another
# process takes one. At nice 19 they run in the pass's gaps: served plain decoding on the 2-core
# CPU went from 23.1 to 26.2 tok/s at one client (chat), 8 clients' chains from 78 to 88 tok/s.
CONTROL_NICE = ("nice", "-n", "19")


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


def _role_names(role: str, count: int) -> tuple[str, ...]:
    """The process names of ``count`` instances of a role: ``verifier``, ``verifier2``, ..."""
    return tuple(role if i == 0 else f"{role}{i + 1}" for i in range(count))


def _stack_redis(redis_url: str | None, redis_dir: Path | None) -> tuple[object | None, str]:
    """A stack's session store and its URL: ``redis_url`` as given (nothing started), else a
    local Redis the stack owns (append-only in ``redis_dir`` when given, else a fresh directory)."""
    if redis_url:
        return None, redis_url
    from specgrove.local_redis import LocalRedis

    redis = LocalRedis.shared(redis_dir) if redis_dir else LocalRedis()
    return redis, redis.url


def _stack_ports(port: int, workers: tuple[str, ...], http_port: int | None,
                 second_orchestrator: bool) -> dict[str, int]:
    """Every port of a local stack, a free one where none is named: ``orchestrator`` (``port``;
    0 = free), each worker's gRPC port and ``<worker>_metrics``, ``http`` when ``http_port`` is
    not None (0 = free), and ``orchestrator2`` with a second orchestrator."""
    from specgrove.local_redis import free_port

    ports = {"orchestrator": port or free_port()}
    for name in workers:
        ports[name], ports[f"{name}_metrics"] = free_port(), free_port()
    if http_port is not None:
        ports["http"] = http_port or free_port()
    if second_orchestrator:
        ports["orchestrator2"] = free_port()
    return ports


@dataclass(frozen=True)
class _StackCommands:
    """The command line of each process of a local stack: a role on its port in ``ports``, under
    its role's prefix, pointed at its peers on loopback."""

    cache_dir: Path
    target: str
    link_delay_ms: float
    ports: dict[str, int]
    prefixes: dict[str, tuple[str, ...]]
    verifier_names: tuple[str, ...]
    drafter_names: tuple[str, ...]

    def _role(self, role: str, name: str, *args: str) -> list[str]:
        return [*self.prefixes.get(role, ()), *role_command(role, self.ports[name], self.cache_dir, *args)]

    def _peers(self, flag: str, names: tuple[str, ...]) -> list[str]:
        """``flag 127.0.0.1:PORT`` for each of ``names``."""
        return [arg for name in names for arg in (flag, f"127.0.0.1:{self.ports[name]}")]

    def verifier(self, name: str, extra: tuple[str, ...]) -> list[str]:
        return self._role("verifier", name, "--target", self.target, "--link-delay-ms", str(self.link_delay_ms),
                          "--metrics-port", str(self.ports[f"{name}_metrics"]), *extra)

    def worker(self, name: str, draft: str, extra: tuple[str, ...]) -> list[str]:
        return self._role("worker", name, "--target", self.target, "--draft", draft,
                          "--link-delay-ms", str(self.link_delay_ms),
                          "--metrics-port", str(self.ports[f"{name}_metrics"]), *extra)

    def drafter(self, name: str, draft: str, guess_count: int, guess_width: int | None) -> list[str]:
        width = ("--guess-width", str(guess_width)) if guess_width is not None else ()
        return self._role("drafter", name, "--draft", draft, "--target", self.target,
                          "--metrics-port", str(self.ports[f"{name}_metrics"]),
                          "--link-delay-ms", str(self.link_delay_ms),
                          *self._peers("--verifier", self.verifier_names),  # the only verifiers it may stream to
                          "--guess-count", str(guess_count), *width)

    def orchestrator(self, name: str, redis_url: str, mode: str, draft_len: int, extra: tuple[str, ...]) -> list[str]:
        return self._role("orchestrator", name, "--target", self.target, "--redis-url", redis_url,
                          *self._peers("--drafter", self.drafter_names),
                          *self._peers("--verifier", self.verifier_names),
                          "--mode", mode, "--draft-len", str(draft_len), *extra)


def _launch(stack: Stack) -> Stack:
    """Start every process of ``stack`` in the order of its commands (workers first, then the
    orchestrators), then wait until each is healthy; on any failure stop them all and re-raise."""
    try:
        for role in stack.commands:
            stack.start(role, wait=False)
        for role in stack.commands:
            stack.wait_healthy(role)
    except BaseException:
        stack.stop()
        raise
    return stack


def start_stack(port: int, target: str, draft: str, cache_dir: Path, redis_url: str | None = None,
                mode: str = "chain", draft_len: int = 4, link_delay_ms: float = 0.0, log_dir: Path | None = None,
                extra_orchestrator: tuple[str, ...] = (), extra_verifier: tuple[str, ...] = (),
                guess_count: int = GUESS_COUNT, guess_width: int | None = None, env: dict[str, str] | None = None,
                http_port: int | None = None, redis_dir: Path | None = None,
                prefixes: dict[str, tuple[str, ...]] | None = None, verifiers: int = 1, drafters: int = 1,
                second_orchestrator: tuple[str, ...] | None = None, colocated: bool = False) -> Stack:
    """http_port: the orchestrator's OpenAI-compatible HTTP API (0 = a free port, None = none). The
    workers serve /metrics on free ports (``stack.ports``: verifier_metrics, drafter_metrics).
    redis_dir: the local Redis's append-only data (kept across runs; default a fresh directory).
    guess_count / guess_width: the drafter's guesses when the orchestrator guesses ahead.
    prefixes: per role, a command it runs under, e.g. ``{"drafter": ("nice", "-n", "19")}``,
    ``chrt --idle 0`` or ``taskset -c 1`` (benchmarks: on shared cores, a drafter that takes only
    the CPU the verifier leaves, or each role on its own core, as roles on their own machines
    never slow each other). The orchestrators run under ``CONTROL_NICE`` unless it names theirs.
    verifiers / drafters: how many of each (roles ``verifier``, ``verifier2``, ...; every
    orchestrator and drafter is given them all). second_orchestrator: start ``orchestrator2`` too,
    on the same workers and Redis, with these extra arguments (e.g. ``("--guess-ahead",)``): a
    session resumes on either.
    colocated: ``verifiers`` workers (``serve worker``: ``worker``, ``worker2``, ...), each a
    drafter and a verifier in one process, named as both to the orchestrators (``drafters`` and
    the guess options are unused: a worker's drafter takes no guesses on its own verifier)."""
    redis, redis_url = _stack_redis(redis_url, redis_dir)
    if colocated:
        verifier_names = drafter_names = _role_names("worker", verifiers)
        workers = verifier_names
    else:
        verifier_names, drafter_names = _role_names("verifier", verifiers), _role_names("drafter", drafters)
        workers = (*verifier_names, *drafter_names)
    ports = _stack_ports(port, workers, http_port, second_orchestrator is not None)
    prefixes = {"orchestrator": CONTROL_NICE, **(prefixes or {})}
    build = _StackCommands(cache_dir, target, link_delay_ms, ports, prefixes, verifier_names, drafter_names)
    if colocated:
        commands = {name: build.worker(name, draft, extra_verifier) for name in workers}
    else:
        commands = {name: build.verifier(name, extra_verifier) for name in verifier_names}
        commands.update({name: build.drafter(name, draft, guess_count, guess_width) for name in drafter_names})
    http = ("--http-port", str(ports["http"])) if "http" in ports else ()
    commands["orchestrator"] = build.orchestrator("orchestrator", redis_url, mode, draft_len,
                                                  (*http, *extra_orchestrator))
    if second_orchestrator is not None:
        commands["orchestrator2"] = build.orchestrator("orchestrator2", redis_url, mode, draft_len,
                                                       second_orchestrator)
    return _launch(Stack(f"127.0.0.1:{ports['orchestrator']}", redis, ports, commands, worker_env(env), log_dir))
