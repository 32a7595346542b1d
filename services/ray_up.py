"""``specgrove up --ray``: the three roles as Ray actors, each serving the same gRPC API.

Placement: drafter and verifier actors ask for a GPU of a given ``accelerator_type`` when one is
named (``--drafter-accelerator L4 --verifier-accelerator H100``), else for the custom resources
``specgrove_drafter`` / ``specgrove_verifier``, which a KubeRay worker group advertises (see
k8s/ray/raycluster.yaml) and which a local cluster started here provides. The orchestrator
actor needs only a CPU. Redis: ``REDIS_URL``, else a local redis-server (single machine only).

The local cluster runs in a helper process (``python -m services.ray_up``), never inside the
caller. ``ray.init()`` gives the raylet a fixed 30 s to register with the GCS (Ray 2.60
``node.py``, not configurable) while half a dozen Python processes (dashboard, monitor, agents,
workers) start beside it; 2 busy cores overrun that, and the caller, whose gRPC threads are live,
would fork all of them itself (running Python between fork and exec). The caller only
fork-execs the helper, waits for it under its own bound, starts a fresh one when Ray's 30 s ran
out, then connects with ``ray.init(address=...)``.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specgrove.tls import TlsConfig

DRAFTER_RESOURCE, VERIFIER_RESOURCE = "specgrove_drafter", "specgrove_verifier"
LOCAL_CLUSTER = {  # ray.init() arguments of the local cluster: always a new one ("local", never one
    "address": "local",  # that `ray start` left running), offering the placement resources of both GPU roles
    "num_cpus": 3, "resources": {DRAFTER_RESOURCE: 1, VERIFIER_RESOURCE: 1}, "include_dashboard": False,
    "object_store_memory": 80 * 1024 * 1024, "log_to_driver": False,
}
STARTUP_TIMED_OUT = 75  # the helper's exit status when Ray's own start-up wait ran out (EX_TEMPFAIL)


class RoleServer:
    """Runs one role's gRPC server inside a Ray actor process."""

    def __init__(self, role: str, cache_dir: str, options: dict):
        import os

        from services.roles import quiet_omp

        quiet_omp(os.environ)  # before the role loads torch
        self.role, self.cache_dir, self.options = role, Path(cache_dir), options
        self.server = None
        self.loop = None

    def start(self) -> str:
        """Start serving; return the address other actors and clients reach it at."""
        import ray

        from specgrove.models import load_model

        host = ray.util.get_node_ip_address()
        bind = f"{'127.0.0.1' if host in ('127.0.0.1', 'localhost') else '0.0.0.0'}:0"
        o = self.options
        if self.role == "verifier":
            from services.server import create_verifier_server
            from verifier.worker import VerifierWorker

            self.server, port = create_verifier_server(bind, VerifierWorker(load_model(o["target"], self.cache_dir)),
                                                       o.get("auth_token"), tls=o.get("tls"))
            self.server.start()
        elif self.role == "drafter":
            from drafter.factory import make_drafter
            from drafter.worker import DrafterWorker
            from services.server import create_drafter_server
            from specgrove.models import load_text_codec

            drafter, model = make_drafter(o["draft"], load_text_codec(o["target"], self.cache_dir), self.cache_dir)
            self.server, port = create_drafter_server(bind, DrafterWorker(drafter), model, o.get("auth_token"),
                                                      tls=o.get("tls"), verifiers=tuple(o.get("verifiers", ())))
            self.server.start()
        else:
            port = self._start_orchestrator(bind)
        return f"{host}:{port}"

    def _start_orchestrator(self, bind: str) -> int:
        from orchestrator.pipeline import Pipeline, PipelineConfig
        from orchestrator.session_store import SessionStore
        from services.server import create_orchestrator_server
        from specgrove.models import load_text_codec

        o = self.options
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def start():
            config = PipelineConfig(tuple(o["drafters"]), tuple(o["verifiers"]), mode=o["mode"], draft_len=o["draft_len"],
                                    auth_token=o.get("auth_token"), tls=o.get("tls"))
            pipeline = Pipeline(load_text_codec(o["target"], self.cache_dir), SessionStore(o["redis_url"]), config)
            server, port = await create_orchestrator_server(bind, pipeline, auth_token=o.get("auth_token"),
                                                            tls=o.get("tls"))
            await server.start()
            return server, port

        self.server, port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(120)
        return port

    def stop(self) -> None:
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(10)
        elif self.server is not None:
            self.server.stop(1)


@dataclass
class LocalRayCluster:
    """A one-node Ray cluster owned by a helper process; closing the helper's stdin (or this
    process dying) makes it shut the cluster down."""

    address: str  # the GCS address, for ray.init(address=...)
    process: subprocess.Popen

    @classmethod
    def start(cls, timeout: float = 300.0) -> LocalRayCluster:
        """Start a helper; return once its node is up, with a fresh helper each time Ray's own
        start-up wait runs out, for at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        while True:
            cluster = cls("", subprocess.Popen([sys.executable, "-m", "services.ray_up"], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, text=True, start_new_session=True))
            try:
                cluster.address = cluster._wait_for_address(deadline)
            except BaseException:
                cluster.stop()
                raise
            if cluster.address:
                return cluster
            cluster.stop()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no local Ray cluster came up within {timeout:.0f}s (Ray's errors are above)")

    def _wait_for_address(self, deadline: float) -> str:
        """The address the helper prints once its ray.init() returned, or "" when Ray's own
        start-up wait ran out (the helper exits with STARTUP_TIMED_OUT; its processes go with it)."""
        while time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 1.0)[0]:
                line = self.process.stdout.readline().strip()
                if line:
                    return line
                if self.process.wait() == STARTUP_TIMED_OUT:
                    return ""
                raise RuntimeError(f"the local Ray cluster exited with {self.process.returncode} (its stderr is above)")
        raise TimeoutError("the local Ray cluster was not up in time (its stderr is above)")

    def stop(self, timeout: float = 60.0) -> None:
        self.process.stdin.close()  # the helper's ray.shutdown() stops the GCS, raylet and workers
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its children fate-share with it (Ray's reaper and PR_SET_PDEATHSIG)
            self.process.wait()
        self.process.stdout.close()


def _hold_local_cluster() -> int:
    """The helper's body: start the cluster, print its GCS address, keep it until stdin closes."""
    address_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Ray's own output goes to stderr; stdout carries the address line only
    import ray

    try:
        context = ray.init(**LOCAL_CLUSTER)
    except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception when its raylet wait runs out
        if "timed out during startup" not in str(err):
            raise
        print(f"specgrove: {err}; starting a fresh cluster", file=sys.stderr, flush=True)
        return STARTUP_TIMED_OUT
    address_out.write(context.address_info["gcs_address"] + "\n")
    address_out.close()
    sys.stdin.read()
    ray.shutdown()
    return 0


@dataclass
class RayStack:
    address: str
    actors: dict
    redis: object
    connected: bool  # this process called ray.init() and disconnects on stop
    cluster: LocalRayCluster | None = None  # the local cluster started for this stack
    workers: dict[str, str] | None = None  # role -> address of the drafter and verifier actors

    def stop(self) -> None:
        import ray

        for actor in self.actors.values():
            try:
                ray.get(actor.stop.remote(), timeout=20)
            except Exception:  # noqa: BLE001 - the actor may be gone already
                pass
            ray.kill(actor)
        if self.redis is not None:
            self.redis.stop()
        if self.connected:
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.stop()


@dataclass(frozen=True)
class RayStackOptions:
    """How ``start_ray_stack`` deploys. address: an existing Ray cluster (None: a local one, up
    within cluster_timeout seconds); redis_url: None starts a local redis-server; the
    accelerators: a GPU type for each worker actor (None: the specgrove_* custom resource).
    auth_token, tls (a ``specgrove.tls.TlsConfig``, its files readable on every node): as for
    ``specgrove serve``; every actor requires the token and sends it on."""

    address: str | None = None
    redis_url: str | None = None
    mode: str = "chain"
    draft_len: int = 4
    drafter_accelerator: str | None = None
    verifier_accelerator: str | None = None
    cluster_timeout: float = 300.0
    auth_token: str | None = None
    tls: TlsConfig | None = None


def start_ray_stack(target: str, draft: str, cache_dir: Path,
                    options: RayStackOptions = RayStackOptions()) -> RayStack:
    """The three roles as actors (see ``RayStackOptions``). The verifier starts first: the drafter
    streams only to it."""
    import ray

    o = options
    connected, cluster = False, None
    if not ray.is_initialized():
        if o.address:
            ray.init(address=o.address)
        else:
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            cluster = LocalRayCluster.start(timeout=o.cluster_timeout)
            try:  # the helper's ray.init() turned token auth on: join it as Ray joins a local cluster it found
                maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
                ray.init(address=cluster.address, log_to_driver=False)
            except BaseException:
                cluster.stop()
                raise
        connected = True
    redis, redis_url = None, o.redis_url
    if not redis_url:
        from specgrove.local_redis import LocalRedis

        redis = LocalRedis()
        redis_url = redis.url
    actor = ray.remote(RoleServer)

    def placement(accelerator: str | None, resource: str) -> dict:
        if accelerator:
            return {"num_gpus": 1, "accelerator_type": accelerator, "num_cpus": 1}
        return {"num_cpus": 1, "resources": {resource: 1}}

    opts = {"target": target, "draft": draft, "auth_token": o.auth_token, "tls": o.tls}
    actors = {
        "verifier": actor.options(**placement(o.verifier_accelerator, VERIFIER_RESOURCE)).remote(
            "verifier", str(cache_dir), opts),
    }
    try:
        verifier_addr = ray.get(actors["verifier"].start.remote(), timeout=600)
        actors["drafter"] = actor.options(**placement(o.drafter_accelerator, DRAFTER_RESOURCE)).remote(
            "drafter", str(cache_dir), {**opts, "verifiers": [verifier_addr]})
        drafter_addr = ray.get(actors["drafter"].start.remote(), timeout=600)
        orch_opts = {**opts, "drafters": [drafter_addr], "verifiers": [verifier_addr],
                     "redis_url": redis_url, "mode": o.mode, "draft_len": o.draft_len}
        actors["orchestrator"] = actor.options(num_cpus=1).remote("orchestrator", str(cache_dir), orch_opts)
        orch_addr = ray.get(actors["orchestrator"].start.remote(), timeout=300)
    except BaseException:
        RayStack("", actors, redis, connected, cluster).stop()
        raise
    return RayStack(orch_addr, actors, redis, connected, cluster, {"drafter": drafter_addr, "verifier": verifier_addr})


if __name__ == "__main__":
    sys.exit(_hold_local_cluster())
