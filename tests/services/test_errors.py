"""Bad requests get the documented gRPC status, before any work, and the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from drafter.tree_growth import ModelDrafter
from specgrove.local_redis import LocalRedis
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack

OK = {"prompt": "my name is", "max_new_tokens": 8}
BAD_REQUESTS = [
    ("negative temperature", {"temperature": -0.5}, grpc.StatusCode.OUT_OF_RANGE, "temperature"),
    ("NaN temperature", {"temperature": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("top_p zero", {"top_p": 0.0}, grpc.StatusCode.OUT_OF_RANGE, "top_p"),
    ("negative top_k", {"top_k": -1}, grpc.StatusCode.OUT_OF_RANGE, "top_k"),
    ("zero max_new_tokens", {"max_new_tokens": 0}, grpc.StatusCode.OUT_OF_RANGE, "max_new_tokens"),
    ("stop id outside the vocabulary", {"stop_token_ids": [10_000]}, grpc.StatusCode.OUT_OF_RANGE, "stop_token_ids"),
    ("empty stop string", {"stop": [""]}, grpc.StatusCode.INVALID_ARGUMENT, "stop"),
    ("no prompt", {"prompt": None}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ("token id outside the vocabulary", {"prompt": None, "token_ids": [5, 99_999]}, grpc.StatusCode.OUT_OF_RANGE, "prompt"),
    ("over-long prompt", {"prompt": "a" * 300}, grpc.StatusCode.OUT_OF_RANGE, "context"),
    ("unknown mode", {"mode": "beam"}, grpc.StatusCode.INVALID_ARGUMENT, "mode"),
    ("draft_len too large", {"draft_len": 99}, grpc.StatusCode.OUT_OF_RANGE, "draft_len"),
    ("tree_budget zero", {"mode": "tree", "tree_budget": 0}, grpc.StatusCode.OUT_OF_RANGE, "tree_budget"),
    ("unknown session", {"prompt": None, "session_id": "no-such-session"}, grpc.StatusCode.NOT_FOUND, "no-such-session"),
]


@pytest.fixture(scope="module")
def stack(tiny_target, redis_server):
    s = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, max_sessions=4)
    yield s
    s.stop()


@pytest.mark.parametrize("name,change,code,mentions", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_the_server_keeps_serving(name, change, code, mentions, stack):
    client = Client(stack.address)
    request = {**OK, **change}
    with pytest.raises(grpc.RpcError) as err:
        client.generate(**request)
    assert err.value.code() == code, err.value.details()
    assert mentions in err.value.details()
    assert client.generate(**OK).finish_reason in ("length", "eos")


def test_resume_beyond_the_confirmed_tokens_is_out_of_range(stack):
    client = Client(stack.address)
    done = client.generate(**OK)
    with pytest.raises(grpc.RpcError) as err:
        client.generate(session_id=done.session_id, resume_from=len(done.token_ids) + 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_abort_of_an_unknown_session_is_not_found(stack):
    with pytest.raises(grpc.RpcError) as err:
        Client(stack.address).abort("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_client_deadline_is_honoured(stack):
    """Either the client's deadline fires first (DEADLINE_EXCEEDED), or the server, seeing the
    deadline too near for another round, ends the stream itself with finish reason time_limit
    (a race that a 1 ms deadline can still lose on a loaded machine); never 200 tokens."""
    client = Client(stack.address)
    try:
        out = client.generate(prompt="my name is", max_new_tokens=200, timeout=0.001)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert out.finish_reason == "time_limit" and len(out.token_ids) < 200
    assert client.generate(**OK).token_ids


def test_redis_down_gives_unavailable_and_service_resumes_when_it_is_back(tiny_target):
    redis = LocalRedis()
    s = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis.url, redis_retry_s=1.0)
    try:
        client = Client(s.address)
        assert client.generate(**OK).token_ids
        redis.stop()
        with pytest.raises(grpc.RpcError) as err:  # down for longer than the store rides through
            client.generate(**OK)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Redis" in err.value.details() and "unreachable for 1 s" in err.value.details()
        redis.restart()
        assert client.generate(**OK).token_ids
    finally:
        s.stop()
        redis.stop()


def test_a_stream_that_fails_before_its_first_chunk_can_still_be_resumed(tiny_target):
    """The session id comes in the stream's initial metadata, once the session exists and before
    any round. Redis dies right then and stays down past the store's retry time: the stream fails
    UNAVAILABLE before any chunk, yet the client holds the id, and once Redis is back (same data)
    the resume completes with the greedy tokens."""
    from orchestrator.engine import SpeculativeEngine
    from specgrove.sampling import SamplingParams

    redis = LocalRedis()
    # a pass takes 300 ms, so Redis is surely down before the first round is committed
    s = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis.url, redis_retry_s=1.0, min_pass_ms=300)
    expected = SpeculativeEngine(tiny_target).generate(tiny_target.encode(OK["prompt"]),
                                                       SamplingParams(max_new_tokens=8)).token_ids
    try:
        client = Client(s.address)
        stream = client.stream(**OK)
        session = Client.session_id(stream)
        redis.kill()
        with pytest.raises(grpc.RpcError) as err:
            next(stream)  # no chunk: the first commit is where it fails
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and session in err.value.details()
        redis.restart()
        resumed = client.generate(session_id=session)
        assert resumed.session_id == session and resumed.token_ids == expected
    finally:
        s.stop()
        redis.stop()


def test_model_info_reports_the_deployment(stack, tiny_target):
    info = Client(stack.address).info()
    assert info.vocab_size == tiny_target.vocab_size and info.vocab_hash == tiny_target.vocab_hash
    assert len(info.drafters) == 1 and len(info.verifiers) == 1
