"""The OpenAI-compatible HTTP API, driven by the official ``openai`` client over loopback against
real gRPC workers and a real Redis: completions and chat, JSON and server-sent events, greedy
identity with the gRPC path, OpenAI-shaped errors, structured output, and /metrics scraped and
parsed as Prometheus' exposition format."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import openai
import pytest

from drafter.tree_growth import ModelDrafter
from services.http import start_http
from specgrove.grammar import GrammarSpec
from specgrove.metrics import serve_metrics
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack
from tests.specgrove.test_metrics import parse

MODEL = "tiny"
REGEX = r"(ab|ba|c)[a-e ]{2,6}\."


@pytest.fixture(scope="module")
def served(tiny_target, tiny_draft, redis_server):
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, mode="chain", draft_len=3)
    runner, port = stack.loop.run(start_http(stack.pipeline, "127.0.0.1", 0, (MODEL,), auth_token=None))
    try:
        yield stack, f"http://127.0.0.1:{port}"
    finally:
        stack.loop.run(runner.cleanup())
        stack.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0, timeout=60)


def grpc_text(stack, prompt: str, **kwargs) -> str:
    return Client(stack.address).generate(prompt=prompt, **kwargs).text


def test_completion_equals_the_grpc_path_at_temperature_zero(served, client):
    stack, _ = served
    out = client.completions.create(model=MODEL, prompt="my name is", max_tokens=20, temperature=0)
    assert out.object == "text_completion" and out.model == MODEL
    assert out.choices[0].text == grpc_text(stack, "my name is", max_new_tokens=20)
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.completion_tokens <= 20 and out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    spec = out.model_extra["speculation"]
    assert spec["rounds"] >= 1 and spec["num_draft_tokens"] >= spec["num_accepted_tokens"]


def test_streamed_completion_joins_to_the_whole_text(served, client):
    stream = client.completions.create(model=MODEL, prompt="the cat", max_tokens=24, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    whole = client.completions.create(model=MODEL, prompt="the cat", max_tokens=24, temperature=0)
    assert text == whole.choices[0].text


def test_a_streamed_completion_names_its_session_which_grpc_can_resume(served):
    """The response's X-SpecGrove-Session-Id header names the session behind the stream; a client
    whose HTTP stream broke can read the tokens confirmed so far, and the rest, over gRPC."""
    import json
    import urllib.request

    stack, base = served
    body = json.dumps({"model": MODEL, "prompt": "the cat", "max_tokens": 16, "temperature": 0, "stream": True})
    request = urllib.request.Request(base + "/v1/completions", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        session = response.headers["X-SpecGrove-Session-Id"]
        events = [json.loads(line[6:]) for line in response.read().decode().splitlines()
                  if line.startswith("data: {")]
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    resumed = Client(stack.address).generate(session_id=session)
    assert len(session) == 32 and resumed.session_id == session and resumed.text == text
    whole = urllib.request.Request(base + "/v1/completions", body.replace('"stream": true', '"stream": false').encode(),
                                   {"Content-Type": "application/json"})
    with urllib.request.urlopen(whole, timeout=60) as response:  # a JSON completion names its session too
        other = response.headers["X-SpecGrove-Session-Id"]
        assert json.loads(response.read())["choices"][0]["text"] == text
    assert len(other) == 32 and other != session


def test_chat_completion_uses_the_chat_template(served, client):
    stack, _ = served
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    prompt_ids = stack.pipeline.text.chat_messages(messages)
    reference = Client(stack.address).generate(token_ids=prompt_ids, max_new_tokens=16)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == reference.text
    assert out.usage.prompt_tokens == len(prompt_ids)
    streamed = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                              stream=True)
    parts = list(streamed)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == reference.text


def test_seeded_sampling_is_reproducible_and_speculation_options_pass_through(client):
    """A pinned chain: the same seed, the same text, on a fresh server too. (A tree's shape follows
    the acceptance the server learns from earlier requests, so a seeded tree request is not
    reproducible across requests: this test once used one and failed whenever it ran first.)"""
    kwargs = dict(model=MODEL, prompt="a b c", max_tokens=16, temperature=1.0, top_p=0.9, seed=11,
                  extra_body={"top_k": 8, "speculation": {"mode": "chain", "draft_len": 3}})
    first, second = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert first.choices[0].text == second.choices[0].text
    assert first.model_extra["speculation"]["seed"] == 11
    assert first.model_extra["speculation"]["num_draft_tokens"] > 0  # the speculation option reached the core
    tree = {**kwargs, "extra_body": {"top_k": 8, "speculation": {"mode": "tree", "tree_budget": 6, "tree_depth": 3}}}
    assert client.completions.create(**tree).model_extra["speculation"]["num_draft_tokens"] > 0


@pytest.mark.parametrize("kwargs, status, param", [
    ({"model": "gpt-4"}, 404, "model"),
    ({"n": 2}, 400, "n"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"max_tokens": 0}, 400, "max_new_tokens"),
    ({"logprobs": 2}, 400, "logprobs"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"extra_body": {"nonsense": 1}}, 400, "nonsense"),
    ({"extra_body": {"speculation": {"mode": "fast"}}}, 400, "speculation.mode"),
    ({"extra_body": {"structured_outputs": {"regex": "[a-"}}}, 400, "grammar"),
    ({"prompt": ["one", "two"]}, 400, "prompt"),
    ({"prompt": [5, 999]}, 400, "prompt"),
])
def test_bad_requests_get_openai_errors_and_serving_continues(client, kwargs, status, param):
    request = {"model": MODEL, "prompt": "hi", "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(**request)
    assert err.value.status_code == status
    body = err.value.body
    assert body["param"] == param and body["message"] and body["type"] == "invalid_request_error"
    ok = client.completions.create(model=MODEL, prompt="hi", max_tokens=4, temperature=0)
    assert ok.usage.completion_tokens >= 1


def test_a_wrong_token_is_refused_when_the_server_has_one(tiny_target, redis_server):
    stack = InProcessStack(tiny_target, None, redis_server.url, mode="ar")
    runner, port = stack.loop.run(start_http(stack.pipeline, "127.0.0.1", 0, (MODEL,), auth_token="s3cret"))
    try:
        base = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
        models = openai.OpenAI(base_url=base, api_key="s3cret", max_retries=0).models.list()
        assert [m.id for m in models.data] == [MODEL]
    finally:
        stack.loop.run(runner.cleanup())
        stack.stop()


def test_structured_output_follows_the_regex_and_equals_constrained_plain_decoding(served, client):
    body = {"structured_outputs": {"regex": REGEX}}
    spec = client.completions.create(model=MODEL, prompt="my name is", max_tokens=12, temperature=0,
                                     extra_body=body)
    plain = client.completions.create(model=MODEL, prompt="my name is", max_tokens=12, temperature=0,
                                      extra_body={**body, "speculation": {"mode": "ar"}})
    assert re.fullmatch(REGEX, spec.choices[0].text), spec.choices[0].text
    assert spec.choices[0].text == plain.choices[0].text and spec.choices[0].finish_reason == "stop"
    assert spec.model_extra["speculation"]["num_draft_tokens"] > 0
    over_grpc = grpc_text(served[0], "my name is", max_new_tokens=12, grammar=GrammarSpec.regex(REGEX))
    assert over_grpc == spec.choices[0].text  # the gRPC request's grammar is the same constraint
    for seed in range(5):  # sampled outputs obey the grammar too
        out = client.completions.create(model=MODEL, prompt="the", max_tokens=12, temperature=1.0, seed=seed,
                                        extra_body={**body, "speculation": {"mode": "tree", "tree_budget": 8}})
        assert re.fullmatch(REGEX, out.choices[0].text), out.choices[0].text


def scrape(url: str) -> dict[str, float]:
    """name{labels} -> value, parsed as Prometheus' text format."""
    return parse(urllib.request.urlopen(url, timeout=10).read().decode())


def test_every_role_serves_prometheus_metrics_with_vllm_names(served, client):
    stack, base = served
    before = scrape(base + "/metrics")
    out = client.completions.create(model=MODEL, prompt="my name is", max_tokens=20, temperature=0)
    after = scrape(base + "/metrics")

    def grew(name: str) -> float:
        return after.get(name + "{}", 0.0) - before.get(name + "{}", 0.0)

    spec = out.model_extra["speculation"]
    assert grew("specgrove:spec_decode_num_draft_tokens_total") == spec["num_draft_tokens"]
    assert grew("specgrove:spec_decode_num_accepted_tokens_total") == spec["num_accepted_tokens"]
    assert grew("specgrove:generation_tokens_total") == out.usage.completion_tokens
    assert grew("specgrove:time_to_first_token_seconds_count") == 1
    assert 'specgrove:num_requests_running{}' in after
    per_pos = sum(v - before.get(k, 0.0) for k, v in after.items()
                  if k.startswith("specgrove:spec_decode_num_accepted_tokens_per_pos_total"))
    assert per_pos == spec["num_accepted_tokens"]
    for worker, name in ((stack.verifier_worker, "verify"), (stack.drafter_worker, "draft")):
        server, port = serve_metrics(worker.metrics.registry, "127.0.0.1", 0)
        try:
            values = scrape(f"http://127.0.0.1:{port}/metrics")
        finally:
            server.shutdown()
        assert values[f"specgrove:{name}_passes_total{{}}"] >= 1
        assert values["specgrove:kv_cache_sessions{}"] >= 0 and "specgrove:kv_cache_usage_perc{}" in values
        if name == "verify":  # a verify round is one pass
            assert values["specgrove:batch_size_count{}"] == values["specgrove:verify_passes_total{}"]
        else:  # a draft round's levels are passes of their own (shared with the sessions drafting then)
            assert values["specgrove:batch_size_count{}"] >= values["specgrove:draft_passes_total{}"]


def test_health_and_models(served):
    _, base = served
    assert json.loads(urllib.request.urlopen(base + "/health", timeout=5).read()) == {"status": "ok"}
    models = json.loads(urllib.request.urlopen(base + "/v1/models", timeout=5).read())
    assert models["data"][0]["id"] == MODEL
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/v1/nothing", timeout=5)
    assert err.value.code == 404 and "error" in json.loads(err.value.read())
