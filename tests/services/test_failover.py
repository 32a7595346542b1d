"""Failover that moves: a session whose verifier dies continues on another one (which
re-prefills from the context), and a Redis outage of a few seconds is ridden through. The
client sees no error and exactly the target's greedy tokens: none lost, none duplicated."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.engine import SpeculativeEngine
from specgrove.local_redis import LocalRedis
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack

PROMPT = "my name is"
MAX_NEW = 48


@pytest.fixture(scope="module")
def expected(tiny_target):
    ids = tiny_target.encode(PROMPT)
    return ids, SpeculativeEngine(tiny_target).generate(ids, SamplingParams(max_new_tokens=MAX_NEW)).token_ids


def passes(worker) -> float:
    return worker.metrics.registry.get_sample_value("specgrove:verify_passes_total")


@pytest.mark.parametrize("colocated", [False, True])
def test_a_session_moves_to_another_verifier_when_its_own_dies(colocated, tiny_target, tiny_draft, redis_server,
                                                               expected):
    """colocated: two workers (``serve worker``); the one that dies takes its drafter with it."""
    from drafter.tree_growth import ModelDrafter

    ids, reference = expected
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, verifiers=2,
                           drafter_retry_s=0.2, colocated=colocated)
    try:
        tokens, killed, served_before = [], None, 0
        for response in Client(stack.address).stream(token_ids=ids, max_new_tokens=MAX_NEW):
            if response.HasField("chunk"):
                tokens += response.chunk.token_ids
                if killed is None:  # stop the verifier that holds the session's cache
                    session = response.chunk.session_id
                    killed = next(i for i, w in enumerate(stack.verifier_workers) if session in w._sessions)
                    stack.verifiers[killed].stop(0)
                    served_before = passes(stack.verifier_workers[1 - killed])
            else:
                completion = response.completion
        assert tokens == reference and completion.usage.completion_tokens == MAX_NEW
        assert passes(stack.verifier_workers[1 - killed]) > served_before  # the other one finished it
    finally:
        stack.stop()


def test_a_session_moves_to_another_drafter_when_its_own_dies(tiny_target, redis_server, expected):
    from drafter.tree_growth import ModelDrafter

    ids, reference = expected
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, drafters=2, draft_len=2)
    try:
        tokens, chunks, killed = [], [], None
        for response in Client(stack.address).stream(token_ids=ids, max_new_tokens=MAX_NEW):
            if response.HasField("chunk"):
                tokens += response.chunk.token_ids
                chunks.append(response.chunk)
                if killed is None:  # stop the drafter that holds the session's draft cache
                    session = response.chunk.session_id
                    killed = next(i for i, w in enumerate(stack.drafter_workers) if session in w._sessions)
                    stack.drafter_servers[killed].stop(0)
                    after, other = len(chunks), stack.drafter_workers[1 - killed].metrics.registry
                    drafted_before = other.get_sample_value("specgrove:draft_passes_total")
        assert tokens == reference
        plain = [c for c in chunks[after:-1] if not c.stats.num_drafted]  # (the last round may have no room)
        assert len(plain) <= 1 and len(chunks) - after > 4  # one round fell back; drafting went on elsewhere
        assert other.get_sample_value("specgrove:draft_passes_total") > drafted_before  # the other drafter
    finally:
        stack.stop()


def test_a_short_redis_outage_is_ridden_through(tiny_target, expected, tmp_path):
    ids, reference = expected
    redis = LocalRedis(data_dir=tmp_path / "redis")
    stack = InProcessStack(tiny_target, None, redis.url, min_pass_ms=30)  # ~1.5 s of rounds
    try:
        tokens = []
        for response in Client(stack.address).stream(token_ids=ids, max_new_tokens=MAX_NEW):
            if response.HasField("chunk"):
                tokens += response.chunk.token_ids
                if len(tokens) == 3:  # Redis crashes and is back 1.5 s later, from its append-only file
                    redis.kill()
                    threading.Timer(1.5, redis.restart).start()
                    outage_from = time.monotonic()
            else:
                completion = response.completion
        assert time.monotonic() - outage_from > 1.0  # the stream really outlived the outage
        assert tokens == reference and completion.finish_reason == 1  # FINISH_REASON_LENGTH
    finally:
        stack.stop()
        redis.stop()
