"""Tree mode of the engine on tiny random models: greedy identity over 130 tokens (many rounds of
KV compaction on both sides), full acceptance with a self-draft, and the output distribution."""

import pytest

from drafter.tree_growth import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from orchestrator.sequoia import SequoiaTable, TreeShape
from orchestrator.acceptance import AcceptanceStats
from orchestrator.round_planner import LinkStats
from orchestrator.rounds import Speculation, planner_for
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult
from tests.orchestrator.test_engine import exact_two_token_marginals, hf_greedy
from tests.stats import ALPHA, chi_square_p_value

SHAPES = {
    "chain": TreeShape.chain(4),
    "star": TreeShape((-1, -1, -1, -1), 0.0),
    "sequoia-8": SequoiaTable([0.5, 0.2, 0.1, 0.05]).shape(8, 4),
    "sequoia-16": SequoiaTable([0.3, 0.2, 0.1, 0.1, 0.1]).shape(16, 3),
}


@pytest.mark.parametrize("name", SHAPES)
def test_greedy_tree_speculation_equals_target_greedy_over_130_tokens(tiny_target, tiny_draft, name):
    prompt_ids = tiny_target.encode("the cat sat on the mat")
    params = SamplingParams(max_new_tokens=130)
    reference = hf_greedy(tiny_target, prompt_ids, 130)
    for drafter in (ModelDrafter(tiny_draft), ModelDrafter(tiny_target)):
        result = SpeculativeEngine(tiny_target, drafter, tree=SHAPES[name]).generate(prompt_ids, params)
        assert result.token_ids == reference


def test_self_draft_tree_accepts_the_deepest_path(tiny_target):
    shape = SHAPES["sequoia-8"]
    result = SpeculativeEngine(tiny_target, ModelDrafter(tiny_target), tree=shape).generate(
        tiny_target.encode("hello"), SamplingParams(max_new_tokens=60)
    )
    assert all(r.num_accepted == shape.depth for r in result.rounds[:-1])  # the last round may be cut short
    assert result.mean_accepted_length > shape.depth


def test_pinned_size_replans_its_shape_and_stays_exact(tiny_target, tiny_draft):
    shared = AcceptanceStats([0.5, 0.2, 0.1])
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), acceptance=shared,
                               speculation=Speculation("tree", tree_budget=8, tree_depth=4))
    prompt_ids = tiny_target.encode("a b c")
    result = engine.generate(prompt_ids, SamplingParams(max_new_tokens=60))
    assert result.token_ids == hf_greedy(tiny_target, prompt_ids, 60)
    assert sum(shared.offered) > 0  # verify results reached the shared estimate
    assert all(r.num_drafted <= 8 for r in result.rounds)


def test_the_planner_measures_in_process_then_plans(tiny_target, tiny_draft):
    """No profile: the first round is a plain step, the next a probe tree, then planned rounds."""
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), speculation=Speculation("tree"))
    prompt_ids = tiny_target.encode("a b c")
    result = engine.generate(prompt_ids, SamplingParams(max_new_tokens=40))
    assert result.token_ids == hf_greedy(tiny_target, prompt_ids, 40)
    assert result.rounds[0].num_drafted == 0 and result.rounds[1].num_drafted > 0
    assert engine.link.measured  # draft and verify costs measured in process
    assert engine.link.network_ms >= 0.0  # no hops: what a round waits beyond them (passes, catch-up)


def test_sessions_start_from_the_shared_estimate_and_feed_it():
    shared = AcceptanceStats([0.5, 0.2, 0.1])
    spec = Speculation("tree", tree_budget=8, tree_depth=4)
    first = planner_for(spec, LinkStats(), shared)
    miss = VerifyResult([], [], 7, accepted_rank=[0], num_children=[3])  # the root's 3 children all rejected
    prior_shape = first.next().shape
    for _ in range(200):
        first.observe(miss)
    assert first.acceptance.vector()[0] < 0.1  # the session learned its draft misses
    assert shared.vector()[0] < 0.1  # and so did the shared estimate
    second = planner_for(spec, LinkStats(), shared)
    assert second.acceptance.vector() == pytest.approx(shared.vector())  # a new session starts from it
    assert second.next().shape != prior_shape  # so it plans a different tree than the prior did


def test_tree_tokens_follow_target_distribution(tiny_target, tiny_draft):
    """2,500 seeded tree generations of 2 tokens vs the exact target marginals (chi-square, p > 1e-3)."""
    params = SamplingParams(temperature=1.0, top_p=0.9)
    prompt_ids = tiny_target.encode("the cat sat")
    first_p, second_p = exact_two_token_marginals(tiny_target, prompt_ids, params)
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft, top_n=8), tree=SHAPES["sequoia-8"])
    firsts, seconds, accepted = [], [], 0
    for seed in range(2500):
        result = engine.generate(prompt_ids, SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_new_tokens=2))
        firsts.append(result.token_ids[0])
        seconds.append(result.token_ids[1] if len(result.token_ids) > 1 else tiny_target.vocab_size)
        accepted += sum(r.num_accepted for r in result.rounds)
    assert accepted > 100  # draft nodes really were accepted
    assert max(r.num_drafted for r in result.rounds) <= 3  # 2 tokens to emit: one level (the root's 3 children)
    assert chi_square_p_value(firsts, first_p) > ALPHA
    assert chi_square_p_value(seconds, second_p) > ALPHA
