"""The bad-input table: each malformed, oversized or out-of-range request, sent to a real stack
(loopback gRPC, a real Redis, tiny models) or its HTTP API, gets its precise status and a
message naming the field; after each one the same stack still serves a short greedy generation."""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from drafter.tree_growth import ModelDrafter
from services.http import start_http
from services.server import create_orchestrator_server
from specgrove.limits import DEFAULT_LIMITS, Limits
from specgrove.models import load_model
from specgrove.v1 import generate_pb2, generate_pb2_grpc, speculate_pb2, speculate_pb2_grpc
from tests.services.conftest import InProcessStack

TOKEN = "s3cret"
AUTH = [("authorization", f"Bearer {TOKEN}")]
C = grpc.StatusCode
GENERATE = "/specgrove.v1.Orchestrator/Generate"


@pytest.fixture(scope="module")
def stack(tiny_target, tiny_draft, redis_server):
    s = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, auth_token=TOKEN, draft_len=3)
    runner, port = s.loop.run(start_http(s.pipeline, "127.0.0.1", 0, ("tiny",), auth_token=TOKEN))
    s.http = f"http://127.0.0.1:{port}"
    s.channel = grpc.insecure_channel(s.address, options=[("grpc.max_send_message_length", 64 << 20)])
    s.stub = generate_pb2_grpc.OrchestratorStub(s.channel)
    with grpc.insecure_channel(s.verifier_address) as channel:
        s.vocab = speculate_pb2_grpc.VerifierStub(channel).Info(speculate_pb2.InfoRequest(), metadata=AUTH).vocab_size
    yield s
    s.channel.close()
    s.loop.run(runner.cleanup())
    s.stop()


def good(stack, **fields) -> generate_pb2.GenerateRequest:
    request = generate_pb2.GenerateRequest(text="my name is", sampling=generate_pb2.SamplingParams(max_new_tokens=4))
    for name, value in fields.items():
        *path, leaf = name.split(".")
        holder = functools.reduce(getattr, path, request)
        field = getattr(holder, leaf) if leaf in ("stop", "stop_token_ids") else None
        if field is not None:
            field.extend(value)
        elif leaf == "token_ids":
            holder.token_ids.ids.extend(value)
        else:
            setattr(holder, leaf, value)
    return request


def generate(stack, request, metadata=AUTH) -> list:
    return list(stack.stub.Generate(request, metadata=metadata, timeout=60))


def raw_generate(stack, data: bytes) -> list:
    """A Generate call with hand-written wire bytes (what a typed stub cannot send)."""
    call = stack.channel.unary_stream(GENERATE, request_serializer=None,
                                      response_deserializer=generate_pb2.GenerateResponse.FromString)
    return list(call(data, metadata=AUTH, timeout=60))


def finished(stack) -> generate_pb2.Completion:
    return generate(stack, good(stack))[-1].completion


def field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field (payload < 128 bytes)
    return bytes([number << 3 | 2, len(payload)]) + payload


def level(tokens, parents, rows=(), width=0, ids=(), probs=()) -> speculate_pb2.TreeMessage:
    return speculate_pb2.TreeMessage(level=speculate_pb2.TreeLevel(
        tokens=tokens, parents=parents, q_rows=rows, q_width=width, q_ids=ids, q_probs=probs))


def verify(stack, messages: list) -> speculate_pb2.RoundReply:
    """A rogue drafter: a Verify stream of the given messages straight to the verifier."""
    with grpc.insecure_channel(stack.verifier_address) as channel:
        return speculate_pb2_grpc.VerifierStub(channel).Verify(iter(messages), metadata=AUTH, timeout=60)


def header(session: str = "rogue") -> speculate_pb2.TreeMessage:
    from specgrove.codec import pack_ids

    return speculate_pb2.TreeMessage(header=speculate_pb2.RoundContext(session_id=session, step=1,
                                                                       context=pack_ids([5, 6, 7]), seed=1))


def http(stack, path: str, body: bytes, token: str = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(stack.http + path, data=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def completion(**fields) -> bytes:
    return json.dumps({"model": "tiny", "prompt": "my name is", "max_tokens": 4, "temperature": 0, **fields}).encode()


S = generate_pb2.SamplingParams
NAN, INF = float("nan"), float("inf")
MAX = DEFAULT_LIMITS

# (name, call: stack -> anything, expected code, a substring of the message)
GRPC_CASES = [
    ("malformed message", lambda s: raw_generate(s, b"\x0a\xff"), C.INVALID_ARGUMENT, "malformed message"),
    ("invalid UTF-8 in text", lambda s: raw_generate(s, field(1, b"\xff\xfe")), C.INVALID_ARGUMENT, "malformed"),
    ("invalid UTF-8 in a stop string", lambda s: raw_generate(s, field(1, b"hi") + field(4, field(6, b"\xc3("))),
     C.INVALID_ARGUMENT, "malformed"),
    ("message over max_message_bytes", lambda s: generate(s, good(s, text="a" * (MAX.max_message_bytes + 1))),
     C.RESOURCE_EXHAUSTED, "larger than max"),
    ("prompt id above the vocabulary", lambda s: generate(s, good(s, token_ids=[5, s.vocab])), C.OUT_OF_RANGE, "prompt"),
    ("negative prompt id", lambda s: generate(s, good(s, token_ids=[5, -1])), C.OUT_OF_RANGE, "prompt"),
    ("stop_token_ids above the vocabulary", lambda s: generate(s, good(s, **{"sampling.stop_token_ids": [s.vocab]})),
     C.OUT_OF_RANGE, "stop_token_ids"),
    ("more prompt ids than max_prompt_tokens", lambda s: generate(s, good(s, token_ids=[5] * (MAX.max_prompt_tokens + 1))),
     C.OUT_OF_RANGE, f"at most {MAX.max_prompt_tokens} prompt tokens"),
    ("over-long text prompt", lambda s: generate(s, good(s, text="a" * 300)), C.OUT_OF_RANGE, "context"),
    ("empty text prompt", lambda s: generate(s, good(s, text="")), C.INVALID_ARGUMENT, "prompt"),
    ("empty token_ids", lambda s: generate(s, generate_pb2.GenerateRequest(token_ids=generate_pb2.TokenIds())),
     C.INVALID_ARGUMENT, "prompt"),
    ("chat with token_ids", lambda s: generate(s, good(s, token_ids=[5, 6], chat=True)), C.INVALID_ARGUMENT, "chat"),
    ("negative temperature", lambda s: generate(s, good(s, **{"sampling.temperature": -0.5})), C.OUT_OF_RANGE,
     "temperature"),
    ("NaN temperature", lambda s: generate(s, good(s, **{"sampling.temperature": NAN})), C.INVALID_ARGUMENT,
     "temperature"),
    ("infinite temperature", lambda s: generate(s, good(s, **{"sampling.temperature": INF})), C.INVALID_ARGUMENT,
     "temperature"),
    ("NaN top_p", lambda s: generate(s, good(s, **{"sampling.top_p": NAN})), C.INVALID_ARGUMENT, "top_p"),
    ("top_p above 1", lambda s: generate(s, good(s, **{"sampling.top_p": 1.5})), C.OUT_OF_RANGE, "top_p"),
    ("negative top_k", lambda s: generate(s, good(s, **{"sampling.top_k": -3})), C.OUT_OF_RANGE, "top_k"),
    ("seed above 2**63 - 1", lambda s: generate(s, good(s, **{"sampling.seed": 2**64 - 1})), C.OUT_OF_RANGE, "seed"),
    ("max_new_tokens 0", lambda s: generate(s, good(s, **{"sampling.max_new_tokens": 0})), C.OUT_OF_RANGE,
     "max_new_tokens"),
    ("max_new_tokens too large", lambda s: generate(s, good(s, **{"sampling.max_new_tokens": 10**6})),
     C.OUT_OF_RANGE, "max_new_tokens"),
    ("too many stop strings", lambda s: generate(s, good(s, **{"sampling.stop": ["x"] * (MAX.max_stop_strings + 1)})),
     C.OUT_OF_RANGE, f"at most {MAX.max_stop_strings} stop strings"),
    ("over-long stop string", lambda s: generate(s, good(s, **{"sampling.stop": ["x" * (MAX.max_stop_string_chars + 1)]})),
     C.OUT_OF_RANGE, f"at most {MAX.max_stop_string_chars} characters"),
    ("unknown speculation mode", lambda s: generate(s, good(s, **{"speculation.mode": "beam"})), C.INVALID_ARGUMENT,
     "speculation.mode"),
    ("tree_budget 0", lambda s: generate(s, good(s, **{"speculation.mode": "tree", "speculation.tree_budget": 0})),
     C.OUT_OF_RANGE, "tree_budget"),
    ("tree_budget too large", lambda s: generate(s, good(s, **{"speculation.tree_budget": 10**6})), C.OUT_OF_RANGE,
     "tree_budget"),
    ("tree_depth too large", lambda s: generate(s, good(s, **{"speculation.tree_depth": 999})), C.OUT_OF_RANGE,
     "tree_depth"),
    ("negative draft_len", lambda s: generate(s, good(s, **{"speculation.draft_len": -1})), C.OUT_OF_RANGE, "draft_len"),
    ("draft_len too large", lambda s: generate(s, good(s, **{"speculation.draft_len": 99})), C.OUT_OF_RANGE,
     "draft_len"),
    ("grammar that does not compile", lambda s: generate(s, good(s, **{"sampling.grammar.kind": "regex",
                                                                         "sampling.grammar.source": "[a-"})),
     C.INVALID_ARGUMENT, "grammar"),
    ("unknown grammar kind", lambda s: generate(s, good(s, **{"sampling.grammar.kind": "yaml"})), C.INVALID_ARGUMENT,
     "grammar"),
    ("unknown session", lambda s: generate(s, generate_pb2.GenerateRequest(session_id="no-such-session")),
     C.NOT_FOUND, "no-such-session"),
    ("resume past the end", lambda s: generate(s, generate_pb2.GenerateRequest(
        session_id=finished(s).session_id, resume_from=10**6)), C.OUT_OF_RANGE, "resume_from"),
    ("wrong auth token", lambda s: generate(s, good(s), metadata=[("authorization", "Bearer wrong")]),
     C.UNAUTHENTICATED, "bearer token"),
    # a rogue drafter's trees, straight to the verifier's Verify stream
    ("Verify: no header", lambda s: verify(s, [level([5], [-1])]), C.INVALID_ARGUMENT, "header"),
    ("Verify: empty stream", lambda s: verify(s, []), C.INVALID_ARGUMENT, "header"),
    ("Verify: two headers", lambda s: verify(s, [header(), header()]), C.INVALID_ARGUMENT, "one header"),
    ("Verify: parent after its child", lambda s: verify(s, [header(), level([5, 6], [1, -1])]), C.INVALID_ARGUMENT,
     "parent"),
    ("Verify: parent out of range", lambda s: verify(s, [header(), level([5], [-7])]), C.INVALID_ARGUMENT, "parent"),
    ("Verify: q row beyond the nodes", lambda s: verify(s, [header(), level([5], [-1], [9], 1, [5], [1.0])]),
     C.INVALID_ARGUMENT, "q row 9"),
    ("Verify: q row sent twice", lambda s: verify(s, [header(), level([5], [-1], [0], 1, [5], [1.0]),
                                                       level([6], [0], [0], 1, [6], [1.0])]),
     C.INVALID_ARGUMENT, "q row 0"),
    ("Verify: q_ids not rows × width", lambda s: verify(s, [header(), level([5], [-1], [0], 2, [5], [1.0, 0.0])]),
     C.INVALID_ARGUMENT, "q_ids"),
    ("Verify: q id above the vocabulary", lambda s: verify(s, [header(), level([5], [-1], [0], 1, [s.vocab], [1.0])]),
     C.OUT_OF_RANGE, "q ids"),
    ("Verify: NaN q probability", lambda s: verify(s, [header(), level([5], [-1], [0], 1, [5], [NAN])]),
     C.INVALID_ARGUMENT, "q_probs"),
    ("Verify: tokens and parents differ in length", lambda s: verify(s, [header(), level([5, 6], [-1])]),
     C.INVALID_ARGUMENT, "parents"),
    ("Verify: node token above the vocabulary", lambda s: verify(s, [header(), level([s.vocab], [-1])]),
     C.OUT_OF_RANGE, "token ids"),
]

HTTP_CASES = [  # (name, path, body, token, HTTP status, a substring of the message)
    ("body not JSON", "/v1/completions", b"{not json", TOKEN, 400, "JSON"),
    ("body not UTF-8", "/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe"}', TOKEN, 400, "UTF-8"),
    ("too many stop strings", "/v1/completions", completion(stop=["x"] * 17), TOKEN, 400, "stop strings"),
    ("over-long stop string", "/v1/completions", completion(stop=["x" * 257]), TOKEN, 400, "characters"),
    ("prompt id above the vocabulary", "/v1/completions", completion(prompt=[5, 10**6]), TOKEN, 400, "prompt"),
    ("negative top_k", "/v1/completions", completion(top_k=-5), TOKEN, 400, "top_k"),
    ("wrong token", "/v1/completions", completion(), "wrong", 401, "token"),
    ("chat without messages", "/v1/chat/completions", json.dumps({"model": "tiny", "messages": []}).encode(), TOKEN,
     400, "messages"),
]


def assert_serves(stack) -> None:
    done = generate(stack, good(stack))[-1].completion
    assert done.finish_reason in (generate_pb2.FINISH_REASON_LENGTH, generate_pb2.FINISH_REASON_EOS)


@pytest.mark.parametrize("name,call,code,mentions", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_bad_grpc_input_gets_its_status_and_serving_continues(name, call, code, mentions, stack):
    with pytest.raises(grpc.RpcError) as err:
        call(stack)
    assert err.value.code() == code, err.value.details()
    assert mentions in err.value.details(), err.value.details()
    assert_serves(stack)


@pytest.mark.parametrize("name,path,body,token,status,mentions", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_bad_http_input_gets_its_status_and_serving_continues(name, path, body, token, status, mentions, stack):
    got, reply = http(stack, path, body, token)
    assert got == status, reply
    assert mentions in reply["error"]["message"], reply
    ok_status, ok = http(stack, "/v1/completions", completion())
    assert ok_status == 200 and ok["usage"]["completion_tokens"] >= 1, ok


def test_streams_beyond_the_per_client_limit_are_resource_exhausted(long_dir, redis_server):
    """One stream open per client: a second from the same token is refused while the first runs
    (each verifier pass lasts 0.3 s, so it is still running), and served once it is done."""
    target = load_model(str(long_dir), Path("/nonexistent"))
    s = InProcessStack(target, None, redis_server.url, mode="ar", min_pass_ms=300, auth_token=TOKEN)

    async def limited():
        server, port = await create_orchestrator_server("127.0.0.1:0", s.pipeline, auth_token=TOKEN,
                                                        limits=Limits(max_streams_per_client=1))
        await server.start()
        return server, port

    server, port = s.loop.run(limited())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generate_pb2_grpc.OrchestratorStub(channel)
            request = generate_pb2.GenerateRequest(text="ab", sampling=S(max_new_tokens=20))
            first = stub.Generate(request, metadata=AUTH, timeout=60)
            next(first)  # the first round is out: the stream is open
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Generate(request, metadata=AUTH, timeout=60))
            assert err.value.code() == C.RESOURCE_EXHAUSTED
            assert "max_streams_per_client" in err.value.details() and "limit 1" in err.value.details()
            first.cancel()
            short = generate_pb2.GenerateRequest(text="ab", sampling=S(max_new_tokens=2))
            for _ in range(50):  # the cancelled stream's slot is freed once its handler ends
                try:
                    assert list(stub.Generate(short, metadata=AUTH, timeout=60))[-1].HasField("completion")
                    break
                except grpc.RpcError as again:
                    assert again.code() == C.RESOURCE_EXHAUSTED
                    time.sleep(0.1)
            else:
                pytest.fail("the slot was never freed")
    finally:
        s.loop.run(server.stop(0))
        s.stop()
