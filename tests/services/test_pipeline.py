"""The distributed pipeline on real loopback gRPC and a real Redis, with tiny models."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from drafter.tree_growth import ModelDrafter
from drafter.ngram import NgramDrafter
from orchestrator.engine import SpeculativeEngine
from orchestrator.rounds import Speculation
from orchestrator.stop_policy import make_policy
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack

PROMPT = "my name is"  # greedy runs 56 tokens before EOS on the tiny target


@pytest.fixture(scope="module")
def reference(tiny_target):
    ids = tiny_target.encode(PROMPT)
    return ids, SpeculativeEngine(tiny_target).generate(ids, SamplingParams(max_new_tokens=48)).token_ids


@pytest.mark.parametrize("mode", ["ar", "chain", "tree"])
@pytest.mark.parametrize("draft", ["self", "other", "ngram"])
def test_greedy_output_through_the_pipeline_equals_the_in_process_engine(
        mode, draft, tiny_target, tiny_draft, reference, redis_server):
    ids, expected = reference
    drafter = {"self": ModelDrafter(tiny_target), "other": ModelDrafter(tiny_draft),
               "ngram": NgramDrafter(tiny_target.vocab_size)}[draft]
    if mode == "tree" and draft == "ngram":
        pytest.skip("the n-gram drafter proposes chains; covered by chain mode")
    stack = InProcessStack(tiny_target, drafter, redis_server.url, mode=mode, draft_len=4)
    try:
        out = Client(stack.address).generate(token_ids=ids, max_new_tokens=48)
    finally:
        stack.stop()
    assert out.token_ids == expected
    assert out.text == tiny_target.decode(expected)
    assert [c.index for c in out.chunks] == [sum(len(c.token_ids) for c in out.chunks[:i]) for i in range(len(out.chunks))]
    if mode == "chain" and draft == "self":  # a draft equal to the target has every token accepted
        assert out.usage["num_accepted_tokens"] == out.usage["num_draft_tokens"] > 0
        assert out.usage["rounds"] < len(expected)
    if mode == "tree" and draft == "self":  # one child per level can be accepted
        assert out.usage["num_accepted_tokens"] > 0
    if mode == "ar":
        assert out.usage["num_draft_tokens"] == 0


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_seeded_sampling_gives_the_same_tokens_in_process_and_served(mode, tiny_target, tiny_draft, redis_server):
    """One round core: with the same seed, draft, plan and AdaEDL policy, the in-process engine and
    the gRPC pipeline draw the same random numbers per round and emit the same tokens (T = 1)."""
    ids = tiny_target.encode(PROMPT)
    spec = Speculation("tree", tree_budget=8, tree_depth=4) if mode == "tree" else Speculation("chain", 4)
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), speculation=spec,
                               policy_factory=lambda n: make_policy("adaedl", n))
    # Draft-ahead draws a round under the previous round's plan (AdaEDL's λ lags one round): off here
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, mode=mode, draft_len=4,
                           draft_ahead=False)
    try:
        client, drafted = Client(stack.address), 0
        for seed in range(3):
            local = engine.generate(ids, SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_new_tokens=40))
            served = client.generate(token_ids=ids, temperature=1.0, top_p=0.9, seed=seed, max_new_tokens=40,
                                     tree_budget=spec.tree_budget, tree_depth=spec.tree_depth)
            assert served.token_ids == local.token_ids
            assert [c.stats.num_drafted for c in served.chunks] == [r.num_drafted for r in local.rounds]
            drafted += sum(r.num_drafted for r in local.rounds)
    finally:
        stack.stop()
    assert drafted > 0


@pytest.mark.parametrize("colocated", [False, True])
def test_plain_steps_run_ahead_emit_the_engines_sampled_tokens(colocated, tiny_target, redis_server):
    """Plain decoding served: the verifier runs each next step while the orchestrator commits this
    one (verifier/ahead.py). With the same seed its tokens are the in-process engine's (T = 1),
    and the orchestrator took steps run ahead."""
    ids = tiny_target.encode(PROMPT)
    engine = SpeculativeEngine(tiny_target)
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, mode="ar", colocated=colocated)
    try:
        client, steps = Client(stack.address), 0
        for seed in range(3):
            local = engine.generate(ids, SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_new_tokens=30))
            served = client.generate(token_ids=ids, temperature=1.0, top_p=0.9, seed=seed, max_new_tokens=30)
            assert served.token_ids == local.token_ids and served.usage["num_draft_tokens"] == 0
            steps += served.usage["rounds"]
    finally:
        stack.stop()
    hits = stack.verifier_worker.metrics.registry.get_sample_value("specgrove:verify_ahead_steps_total",
                                                                   {"outcome": "hit"}) or 0
    assert steps > 3 * 5 and hits >= steps - 3 * 2  # all but a request's first step or two


@pytest.mark.parametrize("spec", [{"mode": "chain", "draft_len": 3}, {"mode": "tree", "tree_budget": 6, "tree_depth": 3}])
def test_a_seeded_sampled_request_is_reproducible_over_the_pipeline(spec, tiny_target, reference, redis_server):
    """Each round draws from generators keyed by (seed, step), so the same speculation choices
    give the same tokens whichever worker serves the round. (The adaptive tree planner's
    choices depend on measured timings: pin size and depth for token-for-token repeats.)"""
    ids, _ = reference
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, mode="tree")
    try:
        client = Client(stack.address)
        sampling = {"max_new_tokens": 32, "temperature": 1.0, "top_p": 0.9}
        runs = [client.generate(token_ids=ids, seed=7, **spec, **sampling) for _ in range(2)]
        other = client.generate(token_ids=ids, seed=8, **spec, **sampling)
    finally:
        stack.stop()
    assert runs[0].token_ids == runs[1].token_ids and runs[0].seed == 7
    assert other.token_ids != runs[0].token_ids


def test_resume_by_session_id_replays_confirmed_tokens_from_an_index(tiny_target, reference, redis_server):
    ids, expected = reference
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url)
    try:
        client = Client(stack.address)
        first = client.generate(token_ids=ids, max_new_tokens=48)
        again = client.generate(session_id=first.session_id, resume_from=5)
    finally:
        stack.stop()
    assert first.token_ids == expected
    assert again.token_ids == expected[5:]
    assert again.finish_reason == first.finish_reason and again.text == first.text
