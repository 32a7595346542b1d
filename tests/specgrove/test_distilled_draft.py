"""The reduced-head draft: scores only its vocabulary subset, round-trips through files, keeps
speculation exact, and `train-draft` runs end to end (tiny target) and resumes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from drafter.tree_growth import ModelDrafter
from training.distill import TrainConfig, init_draft, run
from orchestrator.engine import SpeculativeEngine
from specgrove import distilled_draft
from specgrove.models import CausalLM, load_model
from specgrove.sampling import SamplingParams


def test_logits_outside_the_subset_are_minus_infinity(tiny_target):
    subset = [2, 5, 7, 11, 20]
    model = init_draft(TrainConfig(init_layers=[0, 1]), tiny_target, subset)
    out = model(input_ids=torch.tensor([[3, 4, 5]]), logits_to_keep=2).logits  # [1, 2, V]
    assert out.shape == (1, 2, tiny_target.vocab_size)
    finite = torch.isfinite(out[0, 0]).nonzero().flatten().tolist()
    assert finite == sorted(subset)


def test_save_load_round_trip_and_exact_greedy_speculation(tiny_dir, tiny_target, tmp_path):
    subset = list(range(3, tiny_target.vocab_size))  # everything but <unk>, bos and eos ...
    subset.append(2)  # ... and eos, as the FR-Spec subset always includes the end tokens
    model = init_draft(TrainConfig(init_layers=[1]), tiny_target, subset)
    info = distilled_draft.DraftInfo(str(tiny_dir), tiny_target.vocab_hash, subset)
    distilled_draft.save(model, info, tmp_path / "draft")
    loaded = load_model(str(tmp_path / "draft"), Path("/nonexistent"))
    ids = torch.tensor([4, 5, 6, 7])
    expected = CausalLM(model.eval(), tiny_target.tokenizer, "d").forward(ids, torch.arange(4), loaded.new_cache())
    got = loaded.forward(ids, torch.arange(4), loaded.new_cache())
    assert torch.allclose(got, expected, atol=2e-2, equal_nan=True)  # bf16 weights on disk
    prompt = tiny_target.encode("my name is")
    params = SamplingParams(max_new_tokens=40)
    plain = SpeculativeEngine(tiny_target).generate(prompt, params).token_ids
    assert SpeculativeEngine(tiny_target, ModelDrafter(loaded), 4).generate(prompt, params).token_ids == plain


def test_train_draft_runs_end_to_end_and_resumes(tiny_dir, tmp_path):
    config = TrainConfig(target=str(tiny_dir), init_layers=[0], vocab_subset=20, chat_prompts=2, code_stubs=2,
                         gen_max_tokens=4, gen_batch=2, corpus_tokens=3000, seq_len=16, batch=2, steps=3,
                         warmup=1, checkpoint_every=2, threads=1)
    out = run(config, tmp_path / "run", tmp_path / "out", tmp_path / "cache")
    assert out == tmp_path / "out"
    assert len((tmp_path / "run" / "generated.jsonl").read_text().splitlines()) == 4
    stats = json.loads((tmp_path / "out" / "training.json").read_text())
    assert stats["step"] == 3 and stats["tokens"] == 3 * 2 * 16
    assert len(json.loads((tmp_path / "out" / "draft.json").read_text())["vocab_subset"]) == 20
    draft = load_model(str(tmp_path / "out"), tmp_path / "cache")
    assert draft.vocab_size == load_model(str(tiny_dir), tmp_path / "cache").vocab_size
    longer = replace(config, steps=5)  # resumes from the step-3 checkpoint, does not start over
    run(longer, tmp_path / "run", tmp_path / "out2", tmp_path / "cache")
    stats = json.loads((tmp_path / "out2" / "training.json").read_text())
    assert stats["step"] == 5 and stats["tokens"] == 5 * 2 * 16


def test_transformers_assisted_generation_accepts_the_reduced_head_draft(tiny_dir, tiny_target, tmp_path):
    subset = list(range(tiny_target.vocab_size))[::-1]
    model = init_draft(TrainConfig(init_layers=[0, 1]), tiny_target, subset)  # the target's own layers
    ids = torch.tensor([tiny_target.encode("my name is")])
    kw = dict(max_new_tokens=24, do_sample=False, pad_token_id=2)
    plain = tiny_target.model.generate(ids, **kw)
    assisted = tiny_target.model.generate(ids, assistant_model=model.eval(), **kw)
    assert torch.equal(plain, assisted)
