import pytest

from orchestrator.tree_sizing import CostProfile, plan_tree

FLAT = {1: 30.0, 2: 31.0, 4: 32.0, 8: 33.0, 16: 35.0, 32: 40.0, 64: 60.0, 128: 100.0}  # GPU-like
STEEP = {1: 30.0, 2: 45.0, 4: 75.0, 8: 135.0, 16: 255.0, 32: 495.0, 64: 975.0, 128: 1935.0}  # linear in tokens
GOOD = [0.7, 0.1, 0.05, 0.03]


def test_verify_time_interpolates_and_extrapolates():
    profile = CostProfile({1: 10.0, 4: 16.0, 8: 20.0}, draft_level_ms=1.0)
    assert profile.verify_time(4) == 16.0
    assert profile.verify_time(2) == pytest.approx(12.0)
    assert profile.verify_time(12) == pytest.approx(24.0)  # slope of the last segment
    assert CostProfile.from_json(profile.to_json()) == profile


def test_flat_costs_and_cheap_draft_choose_a_large_tree():
    plan = plan_tree(CostProfile(FLAT, draft_level_ms=1.0), GOOD, max_size=64, max_depth=10)
    assert plan.size >= 16 and plan.depth >= 4
    assert plan.shape is not None and plan.shape.size == plan.size
    assert plan.round_ms == pytest.approx(plan.depth * 1.0 + CostProfile(FLAT, 1.0).verify_time(plan.size + 1))


def test_steep_costs_choose_a_smaller_tree_than_flat_costs():
    flat = plan_tree(CostProfile(FLAT, draft_level_ms=1.0), GOOD, max_size=64, max_depth=10)
    steep = plan_tree(CostProfile(STEEP, draft_level_ms=1.0), GOOD, max_size=64, max_depth=10)
    assert 0 < steep.size < flat.size


def test_slow_draft_or_poor_acceptance_means_plain_decoding():
    assert plan_tree(CostProfile(FLAT, draft_level_ms=40.0), GOOD, max_size=32, max_depth=8).size == 0
    assert plan_tree(CostProfile(STEEP, draft_level_ms=3.0), [0.05, 0.02], max_size=32, max_depth=8).size == 0


def test_network_time_makes_trees_deeper_and_larger():
    near = plan_tree(CostProfile(FLAT, draft_level_ms=2.0, network_ms=0.0), GOOD, max_size=64, max_depth=12)
    far = plan_tree(CostProfile(FLAT, draft_level_ms=2.0, network_ms=80.0), GOOD, max_size=64, max_depth=12)
    assert far.expected_tokens > near.expected_tokens and far.size >= near.size


def test_pinned_budget_and_depth_are_respected():
    plan = plan_tree(CostProfile(STEEP, draft_level_ms=40.0), GOOD, max_size=64, max_depth=10, fixed_size=8, fixed_depth=3)
    assert (plan.size, plan.depth) == (8, 3) and plan.shape.depth <= 3
