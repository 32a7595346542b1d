"""The feature-level draft served over loopback gRPC: the verifier returns the target's features
of the accepted tokens with each result; a drafter that lacks them (fresh, restarted, evicted, or
after plain rounds) asks the verifier (``Features``) and goes on drafting."""

from __future__ import annotations

import pytest

from orchestrator.engine import SpeculativeEngine
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack

PROMPT = "my name is"


@pytest.fixture(scope="module")
def reference(tiny_target):
    ids = tiny_target.encode(PROMPT)
    return ids, SpeculativeEngine(tiny_target).generate(ids, SamplingParams(max_new_tokens=48)).token_ids


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_feature_draft_over_grpc_equals_target_greedy(mode, tiny_target, tiny_feature_drafter, reference, redis_server):
    ids, expected = reference
    options = {"tree_budget": 8, "tree_depth": 4} if mode == "tree" else {}
    stack = InProcessStack(tiny_target, tiny_feature_drafter, redis_server.url, mode=mode, draft_len=4)
    try:
        out = Client(stack.address).generate(token_ids=ids, max_new_tokens=48, **options)
    finally:
        stack.stop()
    assert out.token_ids == expected
    assert out.usage["num_accepted_tokens"] > 10  # the draft reads the features the verifier returned
    assert out.usage["rounds"] < len(expected)


def test_a_drafter_that_lost_the_session_fetches_the_prefix_features(tiny_target, tiny_feature_drafter, reference,
                                                                     redis_server):
    ids, expected = reference
    stack = InProcessStack(tiny_target, tiny_feature_drafter, redis_server.url, mode="chain", draft_len=4)
    chunks = []
    try:
        for response in Client(stack.address).stream(token_ids=ids, max_new_tokens=48):
            if response.HasField("chunk"):
                chunks.append(response.chunk)
                if len(chunks) == 3:  # as if the drafter restarted: its features and cache are gone
                    stack.drafter_worker.release(response.chunk.session_id)
    finally:
        stack.stop()
    assert [t for c in chunks for t in c.token_ids] == expected
    assert sum(c.stats.num_accepted for c in chunks[4:]) > 5  # drafting went on after the loss


def test_a_feature_fetch_does_not_hold_the_drafters_model_lock(tiny_target, tiny_feature_drafter, reference,
                                                               redis_server):
    """The fetch waits for a verifier pass (a prefill). Under the drafter's lock it held up every
    other session's levels: 8 served sessions' Draft calls all ran past their 5 s deadline."""
    import threading

    ids, expected = reference
    stack = InProcessStack(tiny_target, tiny_feature_drafter, redis_server.url, mode="chain", draft_len=4)
    free_during_fetch = []
    fetch = stack.verifier_worker.prefix_features

    def watched(*args, **kwargs):  # runs while the drafter waits on its Features call
        def probe():
            free = stack.drafter_worker.lock.acquire(timeout=2)
            if free:
                stack.drafter_worker.lock.release()
            free_during_fetch.append(free)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return fetch(*args, **kwargs)

    stack.verifier_worker.prefix_features = watched
    try:
        out = Client(stack.address).generate(token_ids=ids, max_new_tokens=16)
    finally:
        stack.stop()
    assert out.token_ids == expected[:16]
    assert free_during_fetch and all(free_during_fetch)  # the first round fetched the prompt's features
