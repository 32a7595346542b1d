"""``specgrove up --ray``: the three roles as Ray actors, each serving the same gRPC API.

Placement: drafter and verifier actors ask for a GPU of a given ``accelerator_type`` when one is
named (``--drafter-accelerator L4 --verifier-accelerator H100``), else for the custom resources
``specgrove_drafter`` / ``specgrove_verifier``, which a KubeRay worker group advertises (see
k8s/ray/raycluster.yaml) and which a local cluster started here provides. The orchestrator
actor needs only a CPU. Redis: ``REDIS_URL``, else a local redis-server (single machine only).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

DRAFTER_RESOURCE, VERIFIER_RESOURCE = "specgrove_drafter", "specgrove_verifier"


class RoleServer:
    """Runs one role's gRPC server inside a Ray actor process."""

    def __init__(self, role: str, cache_dir: str, options: dict):
        import os

        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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

            self.server, port = create_verifier_server(bind, VerifierWorker(load_model(o["target"], self.cache_dir)))
            self.server.start()
        elif self.role == "drafter":
            from drafter.factory import make_drafter
            from drafter.worker import DrafterWorker
            from services.server import create_drafter_server
            from specgrove.models import load_text_codec

            drafter, model = make_drafter(o["draft"], load_text_codec(o["target"], self.cache_dir), self.cache_dir)
            self.server, port = create_drafter_server(bind, DrafterWorker(drafter), model)
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
            config = PipelineConfig(tuple(o["drafters"]), tuple(o["verifiers"]), mode=o["mode"], draft_len=o["draft_len"])
            pipeline = Pipeline(load_text_codec(o["target"], self.cache_dir), SessionStore(o["redis_url"]), config)
            server, port = await create_orchestrator_server(bind, pipeline)
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
class RayStack:
    address: str
    actors: dict
    redis: object
    started_ray: bool

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
        if self.started_ray:
            ray.shutdown()


def start_ray_stack(target: str, draft: str, cache_dir: Path, address: str | None = None,
                    redis_url: str | None = None, mode: str = "chain", draft_len: int = 4,
                    drafter_accelerator: str | None = None, verifier_accelerator: str | None = None) -> RayStack:
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:  # a local cluster that offers the placement resources of both GPU roles
            ray.init(num_cpus=3, resources={DRAFTER_RESOURCE: 1, VERIFIER_RESOURCE: 1}, include_dashboard=False,
                     object_store_memory=80 * 1024 * 1024, log_to_driver=False)
        started = True
    redis = None
    if not redis_url:
        from specgrove.local_redis import LocalRedis

        redis = LocalRedis()
        redis_url = redis.url
    actor = ray.remote(RoleServer)

    def placement(accelerator: str | None, resource: str) -> dict:
        if accelerator:
            return {"num_gpus": 1, "accelerator_type": accelerator, "num_cpus": 1}
        return {"num_cpus": 1, "resources": {resource: 1}}

    opts = {"target": target, "draft": draft}
    actors = {
        "verifier": actor.options(**placement(verifier_accelerator, VERIFIER_RESOURCE)).remote("verifier", str(cache_dir), opts),
        "drafter": actor.options(**placement(drafter_accelerator, DRAFTER_RESOURCE)).remote("drafter", str(cache_dir), opts),
    }
    try:
        verifier_addr, drafter_addr = ray.get([actors["verifier"].start.remote(), actors["drafter"].start.remote()],
                                              timeout=600)
        orch_opts = {"target": target, "drafters": [drafter_addr], "verifiers": [verifier_addr],
                     "redis_url": redis_url, "mode": mode, "draft_len": draft_len}
        actors["orchestrator"] = actor.options(num_cpus=1).remote("orchestrator", str(cache_dir), orch_opts)
        orch_addr = ray.get(actors["orchestrator"].start.remote(), timeout=300)
    except BaseException:
        RayStack("", actors, redis, started).stop()
        raise
    return RayStack(orch_addr, actors, redis, started)
