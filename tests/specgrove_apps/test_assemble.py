"""Engine assembly from the CLI's choices, calibration profiles, and `specgrove generate` itself."""

import json

import pytest

from orchestrator.tree_sizing import CostProfile
from specgrove.errors import InvalidArgument, ModelLoadError, VocabularyMismatch
from specgrove.models import CachedSequence, load_model, truncated
from specgrove_apps.assemble import EngineSpec, assemble
from specgrove_apps.calibrate import calibrate, measure_verify_ms
from specgrove_apps.cli import main


def test_tree_mode_with_ngram_draft_is_refused(tiny_dir, tmp_path):
    with pytest.raises(InvalidArgument, match="draft: tree mode needs a draft model"):
        assemble(EngineSpec(mode="tree", target=str(tiny_dir), draft="ngram"), tmp_path)
    with pytest.raises(InvalidArgument, match="mode: must be one of ar, chain, tree"):
        assemble(EngineSpec(mode="beam", target=str(tiny_dir)), tmp_path)


def test_mismatched_draft_is_refused(tiny_dir, tiny_upper_dir, tmp_path):
    with pytest.raises(VocabularyMismatch):
        assemble(EngineSpec(mode="chain", target=str(tiny_dir), draft=str(tiny_upper_dir)), tmp_path)


def test_missing_model_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a model"):
        assemble(EngineSpec(mode="ar", target=str(tmp_path / "nothing")), tmp_path)


def test_truncated_draft_shares_weights_and_leaves_the_target_intact(tiny_target):
    context = tiny_target.encode("hello")
    before = CachedSequence(tiny_target).logits_for(context, 1)
    draft = truncated(tiny_target, 1)
    assert len(draft.model.model.layers) == 1 and draft.model.config.num_hidden_layers == 1
    assert len(tiny_target.model.model.layers) == 2 and tiny_target.model.config.num_hidden_layers == 2
    assert draft.model.lm_head.weight is tiny_target.model.lm_head.weight
    assert (CachedSequence(tiny_target).logits_for(context, 1) == before).all()
    with pytest.raises(ModelLoadError, match=r"layers must be in \[1, 2\]"):
        truncated(tiny_target, 3)


def test_layer_slice_of_a_loaded_target_shares_its_weights(tiny_dir, tmp_path):
    loaded: dict = {}
    target = load_model(str(tiny_dir), tmp_path, loaded)
    draft = load_model(f"{tiny_dir}:layers=1", tmp_path, loaded)
    assert draft.model.lm_head.weight is target.model.lm_head.weight  # not loaded a second time
    assert load_model(f"{tiny_dir}:layers=1", tmp_path, loaded) is draft
    with pytest.raises(ModelLoadError, match="layer count after ':layers=' must be a positive integer"):
        load_model(f"{tiny_dir}:layers=x", tmp_path)


def test_verify_curve_and_quick_profile(tiny_target, tiny_draft):
    curve = measure_verify_ms(tiny_target, tiny_target.encode("the cat sat on the mat"), sizes=(1, 2, 8), repeats=2)
    assert sorted(curve) == [1, 2, 8] and all(ms > 0 for ms in curve.values())
    from drafter.tree_growth import ModelDrafter

    profile = calibrate(tiny_target, tiny_draft, ModelDrafter(tiny_draft), num_prompts=1, quick=True)
    assert profile.verify_ms[1] > 0 and profile.draft_level_ms > 0
    assert CostProfile.from_json(profile.to_json()) == profile


def test_generate_cli_tree_and_chain_match_ar(tiny_dir, tmp_path, capsys):
    outputs = {}
    for mode in ("ar", "chain", "tree"):
        pinned = ["--tree-budget", "4", "--tree-depth", "2"] if mode == "tree" else []
        code = main(["--cache-dir", str(tmp_path), "generate", "the cat", "--mode", mode, "--target", str(tiny_dir),
                     "--draft", str(tiny_dir), "--max-new-tokens", "20", "--json", *pinned])
        assert code == 0
        outputs[mode] = json.loads(capsys.readouterr().out)
    assert outputs["chain"]["token_ids"] == outputs["ar"]["token_ids"] == outputs["tree"]["token_ids"]
    assert outputs["ar"]["mean_accepted_length"] == 1.0
    assert outputs["chain"]["mean_accepted_length"] > 1.0  # the draft is the target itself
    assert outputs["tree"]["engine"].startswith("tree m=4 d=2 (pinned")
    assert outputs["tree"]["mean_accepted_length"] > 1.0
    assert (tmp_path / "profiles").is_dir()  # the quick profile was cached for next time


def test_generate_cli_reports_bad_parameters(capsys):
    assert main(["generate", "hi", "--top-p", "1.5"]) == 2
    assert "top_p: must be in (0, 1]" in capsys.readouterr().err
