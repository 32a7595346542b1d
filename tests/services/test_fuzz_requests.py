"""Property-based fuzzing of GenerateRequest against a running stack (loopback gRPC, a real Redis,
tiny models): every request gets a whole stream (chunks, then one completion) or a gRPC error whose
code says what was wrong — never UNKNOWN or INTERNAL — and the stack still serves afterwards."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from drafter.tree_growth import ModelDrafter
from specgrove.v1 import generate_pb2, generate_pb2_grpc
from tests.services.conftest import InProcessStack

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}
VOCAB = 64  # a bound around the tiny models' vocabulary, so ids fall on both sides of it
F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
INT32 = st.integers(-(2**31), 2**31 - 1)


RARE = st.sampled_from([False] * 5 + [True])  # shrinks to False: mostly well-formed, so streams happen too


def pick(draw, good, bad):
    """A value from ``good`` most of the time, from ``bad`` (out of range, NaN, …) now and then."""
    return draw(bad if draw(RARE) else good)


@st.composite
def requests(draw) -> generate_pb2.GenerateRequest:
    request = generate_pb2.GenerateRequest(chat=draw(RARE))
    prompt = pick(draw, st.sampled_from(["text", "ids"]), st.just("none"))
    if prompt == "text":
        request.text = pick(draw, st.text("abcde ", min_size=1, max_size=20), st.text(max_size=40))
    elif prompt == "ids":
        request.token_ids.ids.extend(pick(draw, st.lists(st.integers(3, 40), min_size=1, max_size=12),
                                          st.lists(st.integers(-3, VOCAB + 3), max_size=20)))
    s = request.sampling
    fields = {"temperature": (st.floats(0, 2, width=32), F32), "top_k": (st.integers(0, 10), INT32),
              "top_p": (st.floats(0.0625, 1, width=32), F32), "seed": (st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1)),
              "max_new_tokens": (st.integers(1, 6), st.sampled_from([0, -2, 10**6, 2**31 - 1]))}
    for name, (good, bad) in fields.items():
        if draw(st.booleans()):
            setattr(s, name, pick(draw, good, bad))
    s.stop.extend(pick(draw, st.lists(st.text("abcde. ", min_size=1, max_size=4), max_size=2),
                       st.lists(st.text(max_size=300), max_size=20)))
    s.stop_token_ids.extend(pick(draw, st.lists(st.integers(0, 40), max_size=2),
                                 st.lists(st.one_of(st.integers(-3, VOCAB + 3), INT32), max_size=3)))
    if draw(RARE):
        s.grammar.kind = draw(st.sampled_from(["regex", "json_object", "json_schema", "yaml", ""]))
        s.grammar.source = draw(st.sampled_from(["", "[a-", "(ab|c)+", "{}", "{\"type\": \"string\"}", "{"]))
    spec = request.speculation
    for name, (good, bad) in {"mode": (st.sampled_from(["chain", "ar", "tree"]), st.sampled_from(["beam", ""])),
                              "draft_len": (st.integers(0, 8), st.integers(-3, 100)),
                              "tree_budget": (st.integers(1, 12), st.integers(-2, 3000)),
                              "tree_depth": (st.integers(1, 4), st.integers(-2, 40))}.items():
        if draw(st.booleans()):
            setattr(spec, name, pick(draw, good, bad))
    if draw(RARE):
        request.session_id = draw(st.text(min_size=1, max_size=20))
        request.resume_from = draw(st.integers(0, 2**32 - 1))
    return request


@pytest.fixture(scope="module")
def stub(tiny_target, tiny_draft, redis_server):
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, draft_len=3)
    with grpc.insecure_channel(stack.address) as channel:
        yield generate_pb2_grpc.OrchestratorStub(channel)
    stack.stop()


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(request=requests())
def test_every_request_gets_a_stream_or_a_precise_status(stub, request):
    try:
        events = list(stub.Generate(request, timeout=60))
    except grpc.RpcError as err:
        event(err.code().name)  # --hypothesis-show-statistics: how the examples ended
        assert err.code() in ALLOWED, (err.code(), err.details(), request)
        assert err.details()
        return
    event("stream")
    assert events and events[-1].HasField("completion"), request
    assert all(e.HasField("chunk") for e in events[:-1])


def test_the_stack_serves_after_the_fuzzing(stub):
    request = generate_pb2.GenerateRequest(text="my name is", sampling=generate_pb2.SamplingParams(max_new_tokens=4))
    done = list(stub.Generate(request, timeout=60))[-1].completion
    assert done.finish_reason in (generate_pb2.FINISH_REASON_LENGTH, generate_pb2.FINISH_REASON_EOS)
