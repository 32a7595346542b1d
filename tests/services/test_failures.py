"""Failures with real processes on loopback: a drafter killed, a verifier restarted, an
orchestrator restarted mid-generation. Generation completes (or resumes) with exactly the
target's greedy tokens: none lost, none duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.engine import SpeculativeEngine
from services.roles import start_stack
from specgrove.models import load_model
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client

PROMPT = "my name is"
MAX_NEW = 150


@pytest.fixture(scope="module")
def expected(long_dir):
    model = load_model(str(long_dir), Path("/nonexistent"))
    tokens = SpeculativeEngine(model).generate(model.encode(PROMPT), SamplingParams(max_new_tokens=MAX_NEW)).token_ids
    assert len(tokens) == MAX_NEW
    return tokens


@pytest.fixture
def stack(long_dir, tmp_path):
    s = start_stack(0, str(long_dir), str(long_dir), tmp_path / "cache", link_delay_ms=15, log_dir=tmp_path)
    yield s
    s.stop()


def test_killing_the_drafter_mid_generation_falls_back_to_plain_decoding(stack, expected):
    chunks = []
    for response in Client(stack.address).stream(PROMPT, max_new_tokens=MAX_NEW):
        if response.HasField("chunk"):
            chunks.append(response.chunk)
            if len(chunks) == 1:
                stack.kill("drafter")
        else:
            completion = response.completion
    tokens = [t for c in chunks for t in c.token_ids]
    assert tokens == expected
    assert chunks[0].stats.num_drafted > 0  # speculation before the kill
    assert chunks[-1].stats.num_drafted == 0  # plain decoding after it
    assert completion.usage.completion_tokens == MAX_NEW


def test_a_restarted_verifier_re_prefills_and_generation_completes(stack, expected):
    tokens = []
    for response in Client(stack.address).stream(PROMPT, max_new_tokens=MAX_NEW):
        if response.HasField("chunk"):
            tokens += response.chunk.token_ids
            if len(tokens) == len(response.chunk.token_ids):  # after the first chunk
                stack.kill("verifier")
                stack.start("verifier", wait=False)  # comes back while the orchestrator retries
    assert tokens == expected


def test_after_an_orchestrator_crash_the_session_resumes_by_id(stack, expected):
    client = Client(stack.address)
    tokens, session = [], None
    for response in client.stream(PROMPT, max_new_tokens=MAX_NEW):
        tokens += response.chunk.token_ids
        session = response.chunk.session_id
        if len(tokens) >= 20:
            break
    stack.kill("orchestrator")
    stack.start("orchestrator")
    rest = Client(stack.address).generate(session_id=session, resume_from=len(tokens))
    assert tokens + rest.token_ids == expected
    assert rest.finish_reason == "length"
