"""The feature-level draft: its layer, training-time test = drafting, training end to end, and
exact speculation with it (greedy identity; the distribution of later tokens at T > 0)."""

from pathlib import Path

import pytest
import torch

from drafter import feature_model as fd
from drafter.factory import make_drafter
from drafter.feature_sequence import FeatureDraftModel, FeatureSequence
from training.feature import FeatureTrainConfig, run
from orchestrator.engine import SpeculativeEngine
from orchestrator.sequoia import SequoiaTable
from orchestrator.acceptance import AcceptanceStats
from specgrove.sampling import SamplingParams, warp
from tests.orchestrator.test_engine import hf_greedy
from tests.conftest import TINY_FEATURE_TRAIN
from tests.stats import ALPHA, chi_square_p_value

def untrained(target) -> fd.FeatureDraft:
    c = fd.FeatureDraftConfig.from_target(target.model.config, "tiny", target.vocab_hash, list(range(target.vocab_size)))
    torch.manual_seed(0)
    return fd.init_from_target(c, target.model)


def test_layer_equals_transformers_llama_layer(tiny_target):
    model = untrained(tiny_target)
    hf_layer = tiny_target.model.model.layers[-1]
    x = torch.randn(1, 7, model.config.hidden_size)
    positions = torch.arange(3, 10)
    mask = fd.causal_mask(7)
    with torch.no_grad():
        rot = tiny_target.model.model.rotary_emb(x, positions[None])
        ref = hf_layer(x, attention_mask=mask, position_ids=positions[None], position_embeddings=rot)
        ref = ref[0] if isinstance(ref, tuple) else ref
        attn = model.layer.self_attn
        q, k, v = attn.project(model.layer.input_layernorm(x), positions)
        mine = x + attn.attend(q, k, v, mask)
        mine = mine + model.layer.mlp(model.layer.post_attention_layernorm(mine))
    assert torch.allclose(ref, mine, atol=1e-5)


def test_training_time_test_equals_drafting(tiny_target):
    """Step s of the unrolled training pass equals the s-th token drafted from the cache."""
    model = untrained(tiny_target)
    torch.manual_seed(1)
    ids = torch.randint(3, tiny_target.vocab_size, (1, 14))
    with torch.no_grad():
        features = tiny_target.model.model(input_ids=ids).last_hidden_state
        outs = fd.unrolled(model, features, ids, 3)
    sequence = FeatureSequence(FeatureDraftModel(model, "untrained"))
    for origin in (1, 4, 10):  # the target's features known for tokens 0..origin−1
        context = ids[0, : origin + 1].tolist()
        sequence.set_features(features[0, :origin])
        for s in range(3):  # s tokens drafted on top of the confirmed context
            sequence.logits_for(context + ids[0, origin + 1: origin + 1 + s].tolist(), 1)
            assert torch.allclose(sequence.outputs[-1], outs[s][0, origin + s - 1], atol=1e-5), (origin, s)


def test_training_resumes_and_exports(tiny_dir, tiny_target, tmp_path):
    config = FeatureTrainConfig(target=str(tiny_dir), steps=20, **{**TINY_FEATURE_TRAIN, "checkpoint_every": 10})
    assert run(config, tmp_path / "run", tmp_path / "out", tmp_path / "cache", max_minutes=0.0) == tmp_path / "run"
    checkpoint = torch.load(tmp_path / "run" / "feature-checkpoint.pt", weights_only=False)
    assert checkpoint["stats"]["step"] == 10  # stopped at the first checkpoint (time limit 0)
    assert run(config, tmp_path / "run", tmp_path / "out", tmp_path / "cache") == tmp_path / "out"
    assert fd.is_feature_draft(tmp_path / "out")
    drafter, model = make_drafter(str(tmp_path / "out"), tiny_target, tmp_path / "cache")
    assert drafter.needs_features and model.vocab_size == tiny_target.vocab_size


@pytest.mark.parametrize("draft_len", [1, 3, 6])
def test_greedy_chains_equal_target_greedy(tiny_target, tiny_feature_drafter, draft_len):
    accepted = 0
    for prompt in ("the cat sat on the mat. the cat", "hello there, general"):
        ids = tiny_target.encode(prompt)
        result = SpeculativeEngine(tiny_target, tiny_feature_drafter, draft_len).generate(ids, SamplingParams(max_new_tokens=40))
        assert result.token_ids == hf_greedy(tiny_target, ids, 40)
        assert result.rounds[0].num_drafted > 0  # the first round drafts on the prefix features the verifier computes
        accepted += sum(r.num_accepted for r in result.rounds)
    assert accepted > 10  # the trained draft is really used


def test_greedy_trees_equal_target_greedy(tiny_target, tiny_feature_drafter):
    prior = [0.5, 0.2, 0.1]
    shape = SequoiaTable(prior, max_size=12, max_depth=4).shape(12, 4)
    engine = SpeculativeEngine(tiny_target, tiny_feature_drafter, tree=shape, acceptance=AcceptanceStats(prior))
    ids = tiny_target.encode("a b c a b c a b")
    result = engine.generate(ids, SamplingParams(max_new_tokens=60))
    assert result.token_ids == hf_greedy(tiny_target, ids, 60)
    assert max(r.num_accepted for r in result.rounds) >= 2


def exact_marginals(target, prompt_ids: list[int], params: SamplingParams, n: int) -> list[torch.Tensor]:
    """The target-only distributions of tokens 1..n, each over V + 1 (the last cell: none, after EOS)."""
    vocab = target.vocab_size
    prefixes = {(): 1.0}  # prefix -> its probability (prefixes that did not end in EOS)
    marginals = []
    for _ in range(n):
        dist = torch.zeros(vocab + 1, dtype=torch.float64)
        keys = list(prefixes)
        ended = 1.0 - sum(prefixes.values())
        dist[vocab] = ended
        with torch.inference_mode():
            batch = torch.tensor([prompt_ids + list(k) for k in keys])
            rows = warp(target.model(batch).logits[:, -1], params).double()  # [P, V]
        nxt = {}
        for key, row in zip(keys, rows):
            dist[:vocab] += prefixes[key] * row
            for x in torch.nonzero(row > 1e-9).flatten().tolist():
                if x not in target.eos_token_ids:
                    nxt[key + (x,)] = prefixes[key] * float(row[x])
        marginals.append(dist)
        prefixes = nxt
    return marginals


@pytest.mark.parametrize(
    "params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=10, top_p=0.9)],
    ids=["T1", "T0.7-k10-p0.9"],
)
def test_sampled_chains_follow_target_distribution(tiny_target, tiny_feature_drafter, params):
    """2,000 seeded generations of 5 tokens: round 1 is a plain step, round 2 drafts a chain of 3
    from the feature draft (rejections mid-chain happen). Tokens 2 and 3 vs the exact target
    marginals: Pearson's chi-square, p > 1e-3 each."""
    prompt_ids = tiny_target.encode("the cat sat")
    exact = exact_marginals(tiny_target, prompt_ids, params, 3)
    engine = SpeculativeEngine(tiny_target, tiny_feature_drafter, draft_len=3)
    seconds, thirds, mid_chain = [], [], 0
    vocab = tiny_target.vocab_size
    for seed in range(2000):
        result = engine.generate(prompt_ids, SamplingParams(**{**params.__dict__, "seed": seed, "max_new_tokens": 5}))
        tokens = result.token_ids + [vocab] * (5 - len(result.token_ids))
        seconds.append(tokens[1])
        thirds.append(tokens[2])
        mid_chain += sum(0 < r.num_accepted < r.num_drafted for r in result.rounds)
    assert mid_chain > 100  # partly accepted chains: the residual path is exercised
    assert chi_square_p_value(seconds, exact[1]) > ALPHA
    assert chi_square_p_value(thirds, exact[2]) > ALPHA
