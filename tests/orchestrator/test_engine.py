"""The in-process engine on tiny random models: greedy identity, distribution, seeds, errors."""

import pytest
import torch

from drafter.tree_growth import ModelDrafter
from drafter.ngram import NgramDrafter
from orchestrator.engine import SpeculativeEngine
from specgrove.errors import InvalidArgument, OutOfRange, VocabularyMismatch
from specgrove.models import check_same_vocabulary, load_model
from specgrove.sampling import SamplingParams, warp
from tests.stats import ALPHA, chi_square_p_value

PROMPTS = ["the cat sat on the mat. the cat", "hello there, general", "a b c a b c a b"]


def hf_greedy(model, prompt_ids, max_new_tokens):
    """The target's own greedy output from transformers' generate: an independent reference."""
    out = model.model.generate(
        torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens,
        eos_token_id=sorted(model.eos_token_ids), pad_token_id=0,
    )
    return out[0, len(prompt_ids):].tolist()


def drafters(target, draft):
    return {"tiny-draft": ModelDrafter(draft), "self-draft": ModelDrafter(target), "ngram": NgramDrafter(target.vocab_size)}


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("draft_len", [1, 3, 6])
def test_greedy_speculation_equals_target_greedy(tiny_target, tiny_draft, prompt, draft_len):
    prompt_ids = tiny_target.encode(prompt)
    params = SamplingParams(max_new_tokens=40)
    reference = hf_greedy(tiny_target, prompt_ids, 40)
    assert SpeculativeEngine(tiny_target).generate(prompt_ids, params).token_ids == reference
    for name, drafter in drafters(tiny_target, tiny_draft).items():
        result = SpeculativeEngine(tiny_target, drafter, draft_len).generate(prompt_ids, params)
        assert result.token_ids == reference, name
    # the self-draft agrees on every token: every round is fully accepted plus a bonus token
    result = SpeculativeEngine(tiny_target, ModelDrafter(tiny_target), draft_len).generate(prompt_ids, params)
    assert result.acceptance_rate == 1.0


def exact_two_token_marginals(target, prompt_ids, params):
    """Target-only distribution of the 1st token [V] and of the 2nd token [V + 1] (last = none, after EOS)."""
    vocab = target.vocab_size
    with torch.inference_mode():
        first = warp(target.model(torch.tensor([prompt_ids])).logits[0, -1], params)
        batch = torch.tensor([prompt_ids + [x] for x in range(vocab)])
        second_given_first = warp(target.model(batch).logits[:, -1], params)  # [V, V]
    second = torch.zeros(vocab + 1, dtype=torch.float64)
    for x in range(vocab):
        if x in target.eos_token_ids:
            second[vocab] += first[x]
        else:
            second[:vocab] += first[x].double() * second_given_first[x].double()
    return first.double(), second


@pytest.mark.parametrize(
    "params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_p=0.9, top_k=12)],
    ids=["T1", "T0.8-k12-p0.9"],
)
def test_speculative_tokens_follow_target_distribution(tiny_target, tiny_draft, params):
    """3,000 seeded generations of 2 tokens vs the exact target marginals (chi-square, p > 1e-3)."""
    prompt_ids = tiny_target.encode("the cat sat")
    first_p, second_p = exact_two_token_marginals(tiny_target, prompt_ids, params)
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), draft_len=3)
    firsts, seconds, drafted = [], [], 0
    for seed in range(3000):
        result = engine.generate(prompt_ids, SamplingParams(**{**params.__dict__, "seed": seed, "max_new_tokens": 2}))
        firsts.append(result.token_ids[0])
        seconds.append(result.token_ids[1] if len(result.token_ids) > 1 else tiny_target.vocab_size)
        drafted += sum(r.num_accepted for r in result.rounds)
    assert drafted > 300  # the draft's tokens really were accepted some of the time
    assert chi_square_p_value(firsts, first_p) > ALPHA
    assert chi_square_p_value(seconds, second_p) > ALPHA


def test_seeded_generation_is_reproducible(tiny_target, tiny_draft):
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), draft_len=4)
    prompt_ids = tiny_target.encode("hello")
    params = SamplingParams(temperature=1.0, seed=1234, max_new_tokens=30)
    first = engine.generate(prompt_ids, params)
    assert engine.generate(prompt_ids, params).token_ids == first.token_ids
    assert first.seed == 1234
    others = {tuple(engine.generate(prompt_ids, SamplingParams(temperature=1.0, seed=s, max_new_tokens=30)).token_ids)
              for s in range(5)}
    assert len(others) > 1  # different seeds give different samples


def test_statistics_are_consistent(tiny_target, tiny_draft):
    result = SpeculativeEngine(tiny_target, ModelDrafter(tiny_target), draft_len=4).generate(
        tiny_target.encode("abc"), SamplingParams(max_new_tokens=20, stop_token_ids=(2,))
    )
    assert sum(r.num_emitted for r in result.rounds) == result.num_generated_tokens
    drafting = [r for r in result.rounds if r.num_drafted]  # vLLM's: per round that drafted
    assert result.mean_accepted_length == pytest.approx(1 + sum(r.num_accepted for r in drafting) / len(drafting))
    assert result.tokens_per_round == pytest.approx(result.num_generated_tokens / len(result.rounds))
    ar = SpeculativeEngine(tiny_target).generate(tiny_target.encode("abc"), SamplingParams(max_new_tokens=20))
    assert ar.mean_accepted_length == 1.0 and ar.acceptance_rate == 0.0


def test_streamed_text_equals_final_text(tiny_target, tiny_draft):
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), draft_len=3)
    params = SamplingParams(temperature=1.0, seed=5, max_new_tokens=40, stop=("zz",))
    streamed = "".join(chunk.text for chunk in engine.stream(tiny_target.encode("abc"), params))
    assert streamed == engine.generate(tiny_target.encode("abc"), params).text


def test_over_long_prompt_is_out_of_range_before_any_work(tiny_target):
    engine = SpeculativeEngine(tiny_target, NgramDrafter(tiny_target.vocab_size), draft_len=4)
    with pytest.raises(OutOfRange, match=r"prompt: 250 prompt tokens \+ max_new_tokens 10 \+ draft margin 4 = 264 exceeds"):
        engine.generate([5] * 250, SamplingParams(max_new_tokens=10))


def test_bad_requests_raise_documented_errors(tiny_target):
    engine = SpeculativeEngine(tiny_target)
    with pytest.raises(InvalidArgument, match="prompt: must contain at least one token"):
        engine.stream([], SamplingParams())  # raised when the request is made, before iterating
    with pytest.raises(OutOfRange, match=r"prompt: token ids must be in \[0, 32\)"):
        engine.generate([99], SamplingParams())
    with pytest.raises(OutOfRange, match="top_p"):
        engine.generate([5], SamplingParams(temperature=1.0, top_p=2.0))
    with pytest.raises(OutOfRange, match="draft_len"):
        SpeculativeEngine(tiny_target, NgramDrafter(tiny_target.vocab_size), draft_len=-1)
    with pytest.raises(InvalidArgument, match="draft: tree mode needs a draft model"):
        SpeculativeEngine(tiny_target, NgramDrafter(tiny_target.vocab_size), tree=object())


def test_vocabulary_mismatch_is_refused(tiny_target, tiny_upper_dir, tmp_path):
    other = load_model(str(tiny_upper_dir), tmp_path)
    with pytest.raises(VocabularyMismatch, match="vocabularies differ"):
        check_same_vocabulary(tiny_target, other)
