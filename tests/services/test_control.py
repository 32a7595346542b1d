"""Abort, client cancellation, the bearer token and the session limit, on real gRPC + Redis."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from drafter.tree_growth import ModelDrafter
from orchestrator.session_store import SessionStore
from specgrove.models import load_model
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack


@pytest.fixture(scope="module")
def long_target(long_dir):
    return load_model(str(long_dir), Path("/nonexistent"))


def test_abort_ends_a_running_generation_as_cancelled_and_keeps_its_tokens(long_target, redis_server):
    stack = InProcessStack(long_target, ModelDrafter(long_target), redis_server.url, link_delay_ms=30)
    try:
        client = Client(stack.address)
        tokens, completion = [], None
        for response in client.stream("my name is", max_new_tokens=200):
            if response.HasField("chunk"):
                tokens += response.chunk.token_ids
                if len(tokens) == len(response.chunk.token_ids):
                    assert client.abort(response.chunk.session_id) is True
            else:
                completion = response.completion
        again = client.generate(session_id=completion.session_id)
    finally:
        stack.stop()
    assert client_finish(completion) == "cancelled" and 0 < len(tokens) < 200
    assert again.token_ids == tokens and again.finish_reason == "cancelled"


def client_finish(completion) -> str:
    from specgrove.codec import FINISH_NAMES

    return FINISH_NAMES[completion.finish_reason]


def wait_until_released(url: str, session_id: str, timeout: float = 20.0) -> int:
    """Wait until no stream holds the session's lease; return its committed step."""
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while client.exists(SessionStore.owner_key(session_id)):
        assert time.monotonic() < deadline, "the server never stopped generating"
        time.sleep(0.05)
    return int(client.hget(SessionStore.key(session_id), "step"))


def test_a_client_cancel_stops_the_generation_and_leaves_it_resumable(long_target, redis_server):
    stack = InProcessStack(long_target, ModelDrafter(long_target), redis_server.url, link_delay_ms=30)
    try:
        client = Client(stack.address)
        stream = client.stream("my name is", max_new_tokens=200)
        first = next(stream).chunk
        stream.cancel()
        step = wait_until_released(redis_server.url, first.session_id)
        time.sleep(0.3)
        assert wait_until_released(redis_server.url, first.session_id) == step  # no round after the cancel
        for worker in stack.verifier_workers + stack.drafter_workers:  # the workers freed its caches
            assert first.session_id not in worker._sessions
        resumed = client.generate(session_id=first.session_id)
        expected = Client(stack.address).generate("my name is", max_new_tokens=200)
    finally:
        stack.stop()
    assert resumed.finish_reason == "length" and resumed.token_ids == expected.token_ids
    assert resumed.token_ids[: len(first.token_ids)] == list(first.token_ids)


def test_the_bearer_token_is_required_everywhere_but_health(tiny_target, redis_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, auth_token="s3cret")
    try:
        with pytest.raises(grpc.RpcError) as err:
            Client(stack.address).generate("my name is", max_new_tokens=4)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            Client(stack.address, auth_token="wrong").generate("my name is", max_new_tokens=4)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        out = Client(stack.address, auth_token="s3cret").generate("my name is", max_new_tokens=8)
        assert out.usage["num_draft_tokens"] > 0  # the orchestrator's calls to the workers carried it too
        with grpc.insecure_channel(stack.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stack.stop()


def test_generations_over_the_limit_wait_in_a_queue_then_get_resource_exhausted(long_target, redis_server):
    stack = InProcessStack(long_target, None, redis_server.url, max_sessions=1, queue_timeout_s=30, min_pass_ms=20)
    try:
        client = Client(stack.address)
        first = client.stream("my name is", max_new_tokens=30)
        next(first)  # running: it holds the only slot
        queued = client.generate("the cat", max_new_tokens=5)  # waits for the slot, then runs
        assert queued.finish_reason == "length" and len(list(first)) > 0
    finally:
        stack.stop()
    stack = InProcessStack(long_target, None, redis_server.url, max_sessions=1, queue_timeout_s=0.2, min_pass_ms=20)
    try:
        client = Client(stack.address)
        first = client.stream("my name is", max_new_tokens=60)
        next(first)
        with pytest.raises(grpc.RpcError) as err:
            client.generate("the cat", max_new_tokens=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "within 0.2 s" in err.value.details()
        first.cancel()
    finally:
        stack.stop()


def test_the_session_limit_gives_resource_exhausted(tiny_target, redis_server):
    stack = InProcessStack(tiny_target, None, redis_server.url, max_sessions=0, queue_timeout_s=0)
    try:
        with pytest.raises(grpc.RpcError) as err:
            Client(stack.address).generate("my name is", max_new_tokens=4)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stack.stop()
