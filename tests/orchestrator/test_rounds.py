"""The round core (orchestrator/rounds.py), driven by hand: what a round drafts under the budget
left, how a verdict becomes tokens, stop rules and policy updates, and the one validation."""

from __future__ import annotations

import pytest

from orchestrator.acceptance import AcceptanceStats
from orchestrator.round_planner import LinkStats
from orchestrator.rounds import SessionRounds, Speculation, check_request, planner_for
from orchestrator.sequoia import SequoiaTable, TreeShape
from orchestrator.stop_policy import AdaEDLPolicy, StaticPolicy
from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.round import RoundReport, RoundTiming
from specgrove.output import GenerationOutput
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult

EOS = 99
TREE = SequoiaTable([0.5, 0.2, 0.1]).shape(8, 4)


def session(spec: Speculation, max_new_tokens: int = 10, policy=None, **params) -> SessionRounds:
    output = GenerationOutput(lambda ids: " ".join(map(str, ids)), frozenset({EOS}),
                              SamplingParams(max_new_tokens=max_new_tokens, **params))
    planner = planner_for(spec, LinkStats(), AcceptanceStats([0.5, 0.2, 0.1]))
    return SessionRounds(spec, output, planner, policy or StaticPolicy(spec.max_len))


def verdict(accepted: list[int], next_token: int, width: int = 1) -> VerifyResult:
    return VerifyResult(list(range(len(accepted))), accepted, next_token, [1] * len(accepted) + [0],
                        [width] * (len(accepted) + 1))


def test_a_chain_round_drafts_no_more_than_the_tokens_left_to_emit():
    core = session(Speculation("chain", 6, adaptive=False), max_new_tokens=4)
    plan = core.plan()
    assert plan.step == 1 and plan.shape == TreeShape.chain(3) and plan.budget.max_len == 3  # 4 left: 3 + 1
    outcome = core.commit(plan, RoundReport(verdict([5, 6], 7), 3, 3))
    assert outcome.emitted == [5, 6, 7] and outcome.index == 0 and outcome.accepted == 2
    last = core.plan()
    assert last.step == 2 and last.shape is None  # one token left: a plain step, nothing to draft
    outcome = core.commit(last, RoundReport(verdict([], 8), 0, 0))
    assert outcome.emitted == [8] and outcome.finish_reason == "length" and core.finish_reason == "length"


def test_a_chain_round_tells_the_drafter_what_its_verify_pass_costs():
    core = session(Speculation("chain", 4, adaptive=False), max_new_tokens=20)
    plan = core.plan()
    link = core.planner.link  # the planner's verify-cost curve (a calibration's, or the prior)
    costs = plan.budget.pass_costs  # a round of l draft tokens: a pass of l + 1 tokens, in plain steps
    assert len(costs) == 5 and costs[0] == pytest.approx(1.0)
    assert costs == pytest.approx([link.ratio(length + 1) / link.ratio(1) for length in range(5)])
    assert all(a <= b for a, b in zip(costs, costs[1:])) and costs[4] > 1


def test_an_adaptive_chain_round_drafts_the_length_the_goodput_planner_picks():
    core = session(Speculation("chain", 8), max_new_tokens=20)  # no K named: goodput sizes each round
    best = core.planner._chain_length()
    plan = core.plan()
    assert 0 < best < 8 and plan.shape == TreeShape.chain(best) and plan.budget.max_len == best
    assert len(plan.budget.pass_costs) == best + 1


def test_passes_the_cpu_feeds_as_four_tokens_cost_what_four_do():
    from orchestrator.round_planner import LinkStats

    padded, plain = LinkStats(min_rows=4), LinkStats()
    assert padded.ratio(2) == padded.ratio(3) == padded.ratio(4) == plain.ratio(4) > plain.ratio(2)
    assert padded.ratio(1) == 1.0 and padded.ratio(8) == plain.ratio(8)
    padded.sessions = plain.sessions = 1.7  # plain steps of 1.7 sessions on average: rows of one token, no padding
    assert padded.batch_ratio(1) == plain.batch_ratio(1) < padded.ratio(4)


def test_a_tree_round_keeps_only_the_levels_the_budget_allows():
    core = session(Speculation("tree", shape=TREE), max_new_tokens=3)
    plan = core.plan()
    assert TREE.depth == 4 and plan.shape.depth == 2 and plan.budget.max_len == 2
    assert plan.shape.size == sum(d <= 2 for d in TREE.depths)
    assert all(p < i for i, p in enumerate(plan.shape.parents))  # a valid tree, parents first


def test_a_stop_rule_cuts_the_verdict_and_the_policy_learns():
    policy = AdaEDLPolicy(4)
    core = session(Speculation("chain", 4, adaptive=False), max_new_tokens=20, policy=policy)
    plan = core.plan()
    assert plan.budget.gamma is not None  # AdaEDL's entropy rule reaches the drafter
    lam = policy.lam
    outcome = core.commit(plan, RoundReport(verdict([5], 6), 4, 4))  # 1 of 4 accepted: below α* = 0.5
    assert policy.lam > lam  # λ rises: chains will stop sooner
    plan = core.plan()
    outcome = core.commit(plan, RoundReport(verdict([7, EOS, 8], 9), 4, 4))
    assert outcome.emitted == [7, EOS] and outcome.finish_reason == "eos" and outcome.index == 2
    with pytest.raises(AssertionError):
        core.plan()  # finished


def test_commit_takes_rounds_in_order_only():
    core = session(Speculation("chain", 2, adaptive=False))
    plan = core.plan()
    core.commit(plan, RoundReport(verdict([], 1), 2, 2))
    with pytest.raises(AssertionError):
        core.commit(plan, RoundReport(verdict([], 1), 2, 2))  # the same round twice


def test_a_resumed_session_continues_its_step_count():
    output = GenerationOutput(str, frozenset(), SamplingParams(max_new_tokens=10))
    spec = Speculation("ar")
    core = SessionRounds(spec, output, planner_for(spec, LinkStats(), AcceptanceStats([0.5])), StaticPolicy(0), step=7)
    assert core.plan().step == 8


def test_speculation_is_validated_once_for_both_loops():
    assert Speculation("chain", 0).validated().mode == "ar"
    assert Speculation("tree").validated(can_draft=False).mode == "ar"  # no drafter deployed
    assert Speculation.from_dict({"mode": "", "draft_len": None}, "tree", 5) == Speculation("tree", 5)
    assert Speculation.from_dict(Speculation("chain", 3).to_dict()) == Speculation("chain", 3)
    with pytest.raises(InvalidArgument, match="speculation.mode"):
        Speculation("beam").validated()
    with pytest.raises(OutOfRange, match="speculation.draft_len"):
        Speculation("chain", 33).validated()
    with pytest.raises(OutOfRange, match="speculation.tree_budget"):
        Speculation("tree", tree_budget=0).validated()
    with pytest.raises(OutOfRange, match="speculation.tree_depth"):
        Speculation("tree", tree_depth=13).validated()
    with pytest.raises(InvalidArgument, match="tree mode needs a draft model"):
        Speculation("tree").validated(grows_trees=False)


def test_check_request_counts_the_draft_margin():
    params = SamplingParams(max_new_tokens=10)
    check_request([1] * 40, params, Speculation("chain", 4), vocab_size=50, max_positions=54)
    with pytest.raises(OutOfRange, match="40 prompt tokens \\+ max_new_tokens 10 \\+ draft margin 5 = 55"):
        check_request([1] * 40, params, Speculation("chain", 5), vocab_size=50, max_positions=54)
    with pytest.raises(OutOfRange, match="draft margin 8"):
        check_request([1] * 40, params, Speculation("tree", shape=TREE), vocab_size=50, max_positions=54)
    with pytest.raises(OutOfRange, match="token ids"):
        check_request([50], params, Speculation("ar"), vocab_size=50, max_positions=54)


def test_a_seeded_sampled_request_pins_its_chain_length_so_it_is_reproducible():
    adaptive = Speculation("chain", 4)
    assert adaptive.for_request(SamplingParams(temperature=1.0, seed=7)).adaptive is False
    assert adaptive.for_request(SamplingParams(temperature=1.0)).adaptive  # unseeded: goodput sizes it
    assert adaptive.for_request(SamplingParams(seed=7)).adaptive  # greedy: the target's tokens whatever the rounds


def test_a_rounds_costs_feed_the_planners_link_statistics_unless_it_was_a_prefill():
    """The round core learns costs as it commits (the drivers only pass them on): a drafted
    round's wait, draft and verify times, a plain step's, and the verifier's load and pass."""
    core = session(Speculation("chain", 3, adaptive=False), max_new_tokens=40)
    link = core.planner.link
    plan = core.plan()
    timing = RoundTiming(draft_ms=12.0, verify_ms=50.0, sessions=3, pass_tokens=6.0, pass_rows=6)
    core.commit(plan, RoundReport(verdict([5], 6), 3, 3, timing))  # no wait given: the prefill, not learnt
    assert link.rounds == 0 and link.draft_level_ms is None
    plan = core.plan()
    core.commit(plan, RoundReport(verdict([5], 6), 3, 3, timing), waited_ms=80.0)
    assert link.rounds == 1 and link.draft_level_ms == 4.0 and link.sessions > 1  # 12 ms over 3 levels
    assert link.network_ms == 80.0 - 12.0 - 50.0  # what the round waited beyond draft and verify
    plan = core.plan()
    core.commit(plan, RoundReport(verdict([], 7), 0, 0, RoundTiming(verify_ms=40.0)), waited_ms=45.0)
    assert link.rounds == 2 and link.plain_ms == 45.0 and link.plain_network_ms == 5.0
