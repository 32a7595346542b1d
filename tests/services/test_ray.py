"""`specgrove up --ray` on a local Ray cluster (CPU, loopback): the three roles as actors serve
a greedy generation identical to the in-process engine. The cluster runs in its own helper
process (``services.ray_up.LocalRayCluster``), never forked from this gRPC-busy one."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.engine import SpeculativeEngine
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client

ray = pytest.importorskip("ray")


def test_ray_actors_serve_the_same_greedy_output(tiny_dir, tiny_target, tmp_path):
    from services.ray_up import start_ray_stack

    ids = tiny_target.encode("my name is")
    expected = SpeculativeEngine(tiny_target).generate(ids, SamplingParams(max_new_tokens=40)).token_ids
    stack = start_ray_stack(str(tiny_dir), str(tiny_dir), tmp_path / "cache", mode="tree")
    try:
        out = Client(stack.address).generate(token_ids=ids, max_new_tokens=40)
        chain = Client(stack.address).generate(token_ids=ids, max_new_tokens=40, mode="chain")
    finally:
        stack.stop()
    assert stack.cluster.process.returncode == 0  # the helper shut its cluster down and exited
    assert out.token_ids == expected and chain.token_ids == expected
    assert chain.usage["num_accepted_tokens"] > 0  # the draft (the target itself) was used
