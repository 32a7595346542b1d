"""Protobuf <-> domain conversion round-trips, and unset optional fields keep their defaults."""

import pytest
import torch

from specgrove import codec
from specgrove.budget import DraftBudget
from specgrove.errors import InvalidArgument
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult
from specgrove.v1 import generate_pb2


def test_unset_sampling_fields_take_the_defaults_and_zero_is_not_unset():
    assert codec.params_from_pb(generate_pb2.SamplingParams()) == SamplingParams()
    pb = generate_pb2.SamplingParams(top_p=0.0, max_new_tokens=0)
    params = codec.params_from_pb(pb)
    assert params.top_p == 0.0 and params.max_new_tokens == 0  # validation rejects these later


def test_sampling_params_round_trip():
    params = SamplingParams(0.7, 40, 0.9, 123, 64, (7, 9), ("\n\n",))
    back = codec.params_from_pb(codec.params_to_pb(params))
    assert back.top_k == 40 and back.seed == 123 and back.stop == ("\n\n",) and back.stop_token_ids == (7, 9)
    assert abs(back.temperature - 0.7) < 1e-6 and abs(back.top_p - 0.9) < 1e-6


def test_packed_ids_and_tree_levels_round_trip_exactly():
    assert codec.unpack_ids(codec.pack_ids([0, 5, 49151])) == [0, 5, 49151]
    rows = {0: (torch.tensor([3, 8]), torch.tensor([0.75, 0.25])), 2: (torch.tensor([4]), torch.tensor([1.0]))}
    tokens, parents, back = codec.level_from_pb(codec.level_to_pb([3, 8], [-1, -1], rows))
    assert tokens == [3, 8] and parents == [-1, -1]
    for row, (ids, probs) in rows.items():
        assert torch.equal(back[row][0], ids) and torch.equal(back[row][1], probs)  # q bits unchanged: exactness


def test_verify_result_and_budget_round_trip():
    result = VerifyResult([0, 2], [5, 6], 7, [1, 2, 0], [2, 2, 0])
    assert codec.result_from_pb(codec.result_to_pb(result, 5, 2)) == result
    budget = DraftBudget(6, gamma=0.2, lam=0.4)
    back = codec.budget_from_pb(codec.budget_to_pb(budget, [-1, 0]))
    assert back.max_len == 6 and back.min_confidence is None and abs(back.lam - 0.4) < 1e-6
    assert codec.budget_from_pb(codec.budget_to_pb(DraftBudget(3), [-1])) == DraftBudget(3)
    costs = codec.budget_from_pb(codec.budget_to_pb(DraftBudget(2, pass_costs=(1.0, 1.25, 1.5)), [-1, 0])).pass_costs
    assert costs == (1.0, 1.25, 1.5)  # float32 holds these exactly
    for bad in ((0.0, 1.0), (1.0, float("nan")), (1.0, -2.0)):  # a cost divides: refused at the wire
        with pytest.raises(InvalidArgument, match="pass_costs"):
            codec.budget_from_pb(codec.budget_to_pb(DraftBudget(1, pass_costs=bad), [-1]))


def test_feature_blocks_round_trip_in_float16_and_refuse_a_ragged_block():
    import torch

    from specgrove import codec
    from specgrove.v1 import speculate_pb2

    features = torch.randn(5, 576) * 3
    block = codec.features_to_pb(features, start=17)
    assert block.start == 17 and block.dim == 576 and len(block.fp16) == 5 * 576 * 2
    start, back = codec.features_from_pb(speculate_pb2.FeatureBlock.FromString(block.SerializeToString()))
    assert start == 17 and back.shape == (5, 576)
    assert torch.allclose(back, features, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="not rows of 576"):
        codec.features_from_pb(speculate_pb2.FeatureBlock(start=0, dim=576, fp16=b"\0\0" * 577))
