"""`specgrove up --ray` on a local Ray cluster (CPU, loopback): the three roles as actors serve
a greedy generation identical to the in-process engine, and every actor requires the bearer
token. The cluster runs in its own helper process (``services.ray_up.LocalRayCluster``), never
forked from this gRPC-busy one."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from orchestrator.engine import SpeculativeEngine
from specgrove.sampling import SamplingParams
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc
from specgrove_apps.client import Client

ray = pytest.importorskip("ray")


def test_ray_actors_serve_the_same_greedy_output(tiny_dir, tiny_target, tmp_path):
    from services.ray_up import RayStackOptions, start_ray_stack

    ids = tiny_target.encode("my name is")
    expected = SpeculativeEngine(tiny_target).generate(ids, SamplingParams(max_new_tokens=40)).token_ids
    stack = start_ray_stack(str(tiny_dir), str(tiny_dir), tmp_path / "cache",
                            RayStackOptions(mode="tree", auth_token="s3cret"))
    try:
        out = Client(stack.address, auth_token="s3cret").generate(token_ids=ids, max_new_tokens=40)
        chain = Client(stack.address, auth_token="s3cret").generate(token_ids=ids, max_new_tokens=40, mode="chain",
                                                                 draft_len=4)
        refused = [status_without_token(lambda: Client(stack.address).generate(token_ids=ids, max_new_tokens=4))]
        for role, stub in (("drafter", speculate_pb2_grpc.DrafterStub), ("verifier", speculate_pb2_grpc.VerifierStub)):
            with grpc.insecure_channel(stack.workers[role]) as channel:
                refused.append(status_without_token(lambda: stub(channel).Info(speculate_pb2.InfoRequest(), timeout=10)))
    finally:
        stack.stop()
    assert refused == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert stack.cluster.process.returncode == 0  # the helper shut its cluster down and exited
    assert out.token_ids == expected and chain.token_ids == expected
    assert chain.usage["num_accepted_tokens"] > 0  # the draft (the target itself) was used


def status_without_token(call) -> grpc.StatusCode | None:
    """The status of a call made without the token (None if it went through)."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return None
