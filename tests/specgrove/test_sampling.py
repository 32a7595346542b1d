import pytest
import torch

from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.sampling import SamplingParams, make_generator, sample, warp

BAD_PARAMS = [
    (dict(temperature=-0.1), OutOfRange, "temperature: must be in [0, 100.0]"),
    (dict(temperature=float("nan")), InvalidArgument, "temperature: must be a finite number"),
    (dict(temperature="1"), InvalidArgument, "temperature: must be a finite number"),
    (dict(top_k=-1), OutOfRange, "top_k: must be >= 0"),
    (dict(top_k=2.5), InvalidArgument, "top_k: must be an integer"),
    (dict(top_p=0.0), OutOfRange, "top_p: must be in (0, 1]"),
    (dict(top_p=1.5), OutOfRange, "top_p: must be in (0, 1]"),
    (dict(seed=-1), OutOfRange, "seed: must be in [0, 2**63 - 1]"),
    (dict(max_new_tokens=0), OutOfRange, "max_new_tokens: must be in [1, 8192]"),
    (dict(max_new_tokens=True), InvalidArgument, "max_new_tokens: must be an integer"),
    (dict(stop_token_ids=(50,)), OutOfRange, "stop_token_ids: each id must be in [0, 32)"),
    (dict(stop=("",)), InvalidArgument, "stop: each stop string must be a non-empty string"),
    (dict(stop=tuple("abcdefghijklmnopq")), OutOfRange, "stop: at most 16 stop strings"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_PARAMS)
def test_bad_parameters_raise_precise_errors(kwargs, error, message):
    with pytest.raises(error) as info:
        SamplingParams(**kwargs).validate(vocab_size=32)
    assert message in str(info.value)
    assert info.value.field == message.split(":")[0]


def test_good_parameters_validate():
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=3, max_new_tokens=10, stop=("\n",))
    assert params.validate(vocab_size=32) is params


def test_greedy_warp_is_one_hot_of_first_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0]])
    assert warp(logits, SamplingParams()).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_temperature_divides_logits():
    logits = torch.randn(3, 10)
    probs = warp(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 2.0, 1.0, 3.0, -1.0]])
    probs = warp(logits, SamplingParams(temperature=1.0, top_k=2))
    expected = torch.softmax(torch.tensor([2.0, 3.0]), dim=-1)
    torch.testing.assert_close(probs[0, [1, 3]], expected)
    assert probs[0, [0, 2, 4]].sum() == 0


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs_in = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs_in.log()
    kept = warp(logits, SamplingParams(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    only_top = warp(logits, SamplingParams(temperature=1.0, top_p=0.5))
    torch.testing.assert_close(only_top, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_warp_is_fp32_and_normalised():
    probs = warp(torch.randn(4, 50, dtype=torch.bfloat16), SamplingParams(temperature=1.3, top_k=20, top_p=0.9))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_seeded_generator_reproduces_and_unseeded_reports_its_seed():
    probs = torch.full((100, 10), 0.1)
    a, seed_a = make_generator(7)
    b, _ = make_generator(7)
    assert seed_a == 7
    assert torch.equal(sample(probs, a), sample(probs, b))
    _, seed = make_generator(None)
    assert isinstance(seed, int) and 0 <= seed < 2**62
