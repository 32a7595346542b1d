"""Draft specs -> drafters, and prompt lookup in front of a draft model (exact, chains only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drafter.factory import make_drafter, model_spec
from drafter.tree_growth import ModelDrafter
from drafter.ngram import NgramDrafter
from orchestrator.engine import SpeculativeEngine
from specgrove.errors import VocabularyMismatch
from specgrove.sampling import SamplingParams, make_generator


def test_specs_make_the_right_drafters(tiny_dir, tiny_target, tiny_upper_dir):
    assert isinstance(make_drafter("ngram", tiny_target, Path("/x"))[0], NgramDrafter)
    plain, model = make_drafter(str(tiny_dir), tiny_target, Path("/x"))
    both, _ = make_drafter(f"ngram+{tiny_dir}", tiny_target, Path("/x"))
    assert isinstance(plain, ModelDrafter) and not plain.lookup and model is not None
    assert both.lookup and both.name.startswith("ngram+")
    assert model_spec("ngram") is None and model_spec(f"ngram+{tiny_dir}") == str(tiny_dir)
    with pytest.raises(VocabularyMismatch):
        make_drafter(str(tiny_upper_dir), tiny_target, Path("/x"))


def test_lookup_first_proposes_the_prompt_continuation_with_one_hot_q(tiny_target, tiny_draft):
    session = ModelDrafter(tiny_draft, lookup=True).open()
    context = tiny_target.encode("abcde xyz abc")
    (level,) = list(session.grow_levels(context, [-1, 0, 1], SamplingParams(temperature=1.0), make_generator(0)[0]))
    assert level.tokens == tiny_target.encode("de ") and level.parents == [-1, 0, 1]
    assert all(ids.tolist() == [t] and probs.tolist() == [1.0] for t, (ids, probs) in zip(level.tokens, level.q_rows.values()))
    no_match = list(session.grow_levels(tiny_target.encode("qrst"), [-1, 0], SamplingParams(), make_generator(0)[0]))
    assert sum(len(level.tokens) for level in no_match) == 2  # the model drafted, a level at a time


def test_lookup_first_keeps_greedy_output_exact(tiny_target, tiny_draft):
    prompt = tiny_target.encode("my name is my name is")
    params = SamplingParams(max_new_tokens=48)
    plain = SpeculativeEngine(tiny_target).generate(prompt, params).token_ids
    spec = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft, lookup=True), 4).generate(prompt, params)
    assert spec.token_ids == plain
