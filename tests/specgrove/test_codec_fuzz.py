"""Property-based fuzzing of the tree codec the verifier uses on a Verify stream: whatever levels a
(rogue or broken) drafter sends, ``codec.tree_levels_from_pb`` followed by the tree build either
gives a well-formed ``TokenTree`` or raises ``InvalidArgument`` (``OutOfRange`` is one) — never
another exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drafter.tree_growth import Level, tree_from_levels
from specgrove import codec
from specgrove.errors import InvalidArgument
from specgrove.v1 import speculate_pb2

VOCAB = 50
small = st.integers(-3, VOCAB + 3)
probs = st.one_of(st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def levels(draw) -> list[speculate_pb2.TreeLevel]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        n = draw(st.integers(0, 4))
        rows = draw(st.lists(st.integers(0, 12), max_size=3))
        width = draw(st.integers(0, 3))
        cells = len(rows) * width + draw(st.sampled_from([0, 0, 0, 1, -1]))  # sometimes the wrong count
        out.append(speculate_pb2.TreeLevel(
            tokens=draw(st.lists(small, min_size=n, max_size=n + draw(st.integers(0, 1)))),
            parents=draw(st.lists(st.integers(-3, 10), min_size=n, max_size=n)),
            q_rows=rows, q_width=width,
            q_ids=draw(st.lists(small, min_size=max(cells, 0), max_size=max(cells, 0))),
            q_probs=draw(st.lists(probs, min_size=max(cells, 0), max_size=max(cells, 0))),
        ))
    return out


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(levels())
def test_malformed_levels_raise_invalid_argument_and_nothing_else(pbs):
    try:
        checked = codec.tree_levels_from_pb(pbs, VOCAB)
    except InvalidArgument:
        return
    tree = tree_from_levels([Level(*parts) for parts in checked])  # TokenTree's own asserts must hold
    assert tree.size == sum(len(pb.tokens) for pb in pbs)
    assert all(0 <= t < VOCAB for t in tree.tokens.tolist())
    assert not tree.q_ids.numel() or (int(tree.q_ids.max()) < VOCAB and int(tree.q_ids.min()) >= -1)
    assert bool((tree.q_probs >= 0).all() and (tree.q_probs <= 1).all())


def test_a_drafter_level_round_trips():
    import torch

    pb = codec.level_to_pb([3, 4], [-1, -1], {0: (torch.tensor([3, 4]), torch.tensor([0.6, 0.4]))})
    [(tokens, parents, q_rows)] = codec.tree_levels_from_pb([pb], VOCAB)
    assert (tokens, parents) == ([3, 4], [-1, -1])
    assert q_rows[0][0].tolist() == [3, 4] and torch.allclose(q_rows[0][1], torch.tensor([0.6, 0.4]))
