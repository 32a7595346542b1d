"""Sequoia DP against brute-force enumeration of every tree, and TreeShape as JSON data."""

import functools
import json
from importlib.resources import files

import jsonschema
import pytest

from orchestrator.acceptance import AcceptanceStats
from orchestrator.sequoia import SequoiaTable, TreeShape, tree_value
from specgrove.tree import VerifyResult

VECTORS = {
    "steep": [0.6, 0.15, 0.08, 0.04],
    "flat": [0.2, 0.18, 0.16, 0.14, 0.12],
    "one-child": [0.7],
}


@functools.lru_cache(maxsize=None)
def all_trees(n: int, depth: int, branch: int) -> tuple[tuple[tuple, ...], ...]:
    """Every ordered tree with n nodes (root included) and depth ≤ depth, as nested child tuples."""
    if n == 1:
        return ((),)
    if depth == 0:
        return ()
    out = []

    def forests(m: int, slots: int):  # ordered lists of subtrees with m nodes in total
        if m == 0:
            yield ()
            return
        if slots == 0:
            return
        for s in range(1, m + 1):
            for first in all_trees(s, depth - 1, branch):
                for rest in forests(m - s, slots - 1):
                    yield (first,) + rest

    out.extend(forests(n - 1, branch))
    return tuple(out)


def nested_value(tree, acceptance) -> float:
    return sum(acceptance[k] * (1 + nested_value(child, acceptance)) for k, child in enumerate(tree))


@pytest.mark.parametrize("name", VECTORS)
def test_dp_equals_brute_force_for_small_trees(name):
    acceptance = VECTORS[name]
    table = SequoiaTable(acceptance, max_size=7, max_depth=7)
    for size in range(1, 8):
        for depth in range(1, 8):
            trees = all_trees(size + 1, depth, len(acceptance))
            best = max((nested_value(t, acceptance) for t in trees), default=None)
            if best is None:
                with pytest.raises(ValueError):
                    table.shape(size, depth)
                continue
            assert table.expected_tokens(size, depth) == pytest.approx(1 + best, abs=1e-12)
            shape = table.shape(size, depth)
            assert shape.size == size and shape.depth <= depth
            assert 1 + tree_value(shape.parents, acceptance) == pytest.approx(1 + best, abs=1e-12)


def test_chain_is_optimal_when_only_the_first_child_is_ever_accepted():
    table = SequoiaTable([0.8, 0.0, 0.0], max_size=6, max_depth=6)
    assert table.shape(6, 6).parents == (-1, 0, 1, 2, 3, 4)
    assert table.expected_tokens(6, 6) == pytest.approx(1 + sum(0.8**i for i in range(1, 7)))


def test_expected_tokens_grow_with_size_and_depth():
    table = SequoiaTable(VECTORS["steep"], max_size=32, max_depth=8)
    g = [[table.expected_tokens(m, d) for d in range(1, 9)] for m in range(1, 33)]
    feasible = [(m, d) for m in range(32) for d in range(8) if g[m][d] > float("-inf")]
    assert len(feasible) > 200  # only wide-and-shallow corners are infeasible with 4 children per node
    assert all(g[m][d] <= g[m + 1][d] + 1e-12 for m, d in feasible if m < 31 and g[m + 1][d] > float("-inf"))
    assert all(g[m][d] <= g[m][d + 1] + 1e-12 for m, d in feasible if d < 7)


def test_tree_shape_json_round_trip_and_schema():
    shape = SequoiaTable(VECTORS["steep"], max_size=16, max_depth=5).shape(16, 5)
    data = json.loads(shape.to_json())
    jsonschema.validate(data, json.loads(files("specgrove.data").joinpath("tree_shape.schema.json").read_text()))
    assert TreeShape.from_json(shape.to_json()) == shape
    assert shape.children(-1) == [i for i, p in enumerate(shape.parents) if p == -1]
    with pytest.raises(ValueError, match="breadth-first"):
        TreeShape.from_json('{"parents": [-1, 2, 0], "expected_tokens": 1.0}')


def test_acceptance_stats_move_from_prior_to_data():
    stats = AcceptanceStats([0.5, 0.2], prior_weight=10)
    assert stats.vector() == pytest.approx([0.5, 0.2])
    hit_second = VerifyResult([1], [7], 3, accepted_rank=[2, 0], num_children=[2, 0])
    for _ in range(1000):
        stats.observe(hit_second)  # the root had 2 children and the 2nd was accepted; then a leaf
    a1, a2 = stats.vector()
    assert a1 < 0.01 and a2 > 0.95
