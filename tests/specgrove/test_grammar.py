"""Structured output under speculation (specgrove.grammar through the in-process engine).

Constrained sampling means: at each step the grammar's forbidden tokens get −inf logits, then the
usual warp. The tests check the mask rows directly, greedy identity of every speculative mode
with constrained plain decoding, and, at T > 0, the distribution of whole outputs against the
exact constrained target distribution computed by enumeration with an independent mask (the
allowed characters read off the regex by hand, not by llguidance)."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from drafter.tree_growth import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from orchestrator.stop_policy import make_policy
from orchestrator.sequoia import TreeShape
from specgrove.errors import InvalidArgument
from specgrove.grammar import Constraint, GrammarSpec
from specgrove.sampling import SamplingParams, warp
from tests.stats import ALPHA, NEGATIVE_ALPHA, chi_square_p_value, detectable_tv

REGEX = r"(ab|ba|c)[a-e ]{2,6}\."
SLOTS = ("abc", "abcde", "abc")  # the statistical test's grammar: one of a-c, one of a-e, one of a-c
STAT_REGEX = "[a-c][a-e][a-c]"
N = 1000
TREE = TreeShape((-1, -1, 0, 0, 1, 2, 4, 6), 0.0)  # 8 nodes, depth 4: two branches at the root and below


def ids_of(model, chars: str) -> list[int]:
    return [model.encode(c)[0] for c in chars]


def test_mask_rows_follow_each_rows_own_path(tiny_target):
    a, b, x = ids_of(tiny_target, "abx")
    eos = 2
    prompt = tiny_target.encode("my name")
    constraint = Constraint(GrammarSpec.regex("ab+"), tiny_target.tokenizer, tiny_target.vocab_size, len(prompt))
    logits = torch.zeros(4, tiny_target.vocab_size)
    masked = constraint.mask_rows(logits, prompt + [a], [[], [b], [x], [b, b]])
    allowed = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in masked]
    assert allowed[0] == {b}  # after "a": only b
    assert allowed[1] == {b, eos} and allowed[3] == {b, eos}  # after "ab": more b, or the end
    assert allowed[2] == set(range(tiny_target.vocab_size))  # a path the grammar forbids: left as it was
    again = constraint.mask_rows(logits[:1], prompt, [[]])  # the state rolls back to a shorter context
    assert set(torch.isfinite(again[0]).nonzero().flatten().tolist()) == {a}


def test_a_grammar_that_does_not_compile_is_refused():
    with pytest.raises(InvalidArgument, match="grammar"):
        SamplingParams(grammar=GrammarSpec.regex("[a-")).validate()
    with pytest.raises(InvalidArgument):
        GrammarSpec.json_schema("not a schema")


def engines(target, draft):
    return {
        "ar": SpeculativeEngine(target, None),
        "chain-k1": SpeculativeEngine(target, ModelDrafter(draft), draft_len=1),
        "chain-k4": SpeculativeEngine(target, ModelDrafter(draft), draft_len=4),
        "adaedl": SpeculativeEngine(target, ModelDrafter(draft), draft_len=6,
                                    policy_factory=lambda k: make_policy("adaedl", k, 0.2, 0.5)),
        "tree": SpeculativeEngine(target, ModelDrafter(draft), tree=TREE),
    }


@pytest.mark.parametrize("prompt", ["my name is", "the", "a b c d"])
def test_greedy_speculation_under_a_grammar_equals_constrained_plain_decoding(tiny_target, tiny_draft, prompt):
    params = SamplingParams(max_new_tokens=12, grammar=GrammarSpec.regex(REGEX))
    outputs = {name: e.generate(tiny_target.encode(prompt), params) for name, e in engines(tiny_target, tiny_draft).items()}
    reference = outputs.pop("ar")
    assert re.fullmatch(REGEX, reference.text), reference.text
    for name, out in outputs.items():
        assert out.token_ids == reference.token_ids, name
        assert sum(r.num_drafted for r in out.rounds) > 0, name  # it did speculate


def constrained_distribution(model, prompt: list[int], params: SamplingParams) -> dict[tuple[int, ...], float]:
    """Exact probability of every output the grammar allows, by enumeration: per step, the
    target's logits outside the slot's characters at −inf, then warp."""
    slots = [ids_of(model, chars) for chars in SLOTS]
    probs: dict[tuple[int, ...], float] = {}
    for combo in itertools.product(*slots):
        mass = 1.0
        for i, token in enumerate(combo):
            with torch.inference_mode():
                logits = model.model(torch.tensor([prompt + list(combo[:i])])).logits[0, -1]
            masked = torch.full_like(logits, -math.inf)
            masked[slots[i]] = logits[slots[i]]
            mass *= float(warp(masked.unsqueeze(0), params)[0, token])
        probs[combo] = mass
    return probs


@pytest.mark.parametrize("mode, params", [
    ("chain-k4", SamplingParams(temperature=1.0, max_new_tokens=4)),
    ("tree", SamplingParams(temperature=0.7, top_k=3, max_new_tokens=4)),
])
def test_sampled_outputs_follow_the_constrained_target_distribution(tiny_target, tiny_draft, mode, params):
    """N whole outputs (three tokens, then the forced end) against the exact constrained target
    distribution over its 45 outputs: Pearson chi-square, pass at p > 1e-3 (TV90 0.09: any shift
    of total variation 0.09 fails with probability >= 90%); negative control: the draft's own
    constrained distribution must be rejected at p < 1e-6."""
    prompt = tiny_target.encode("my name is")
    grammar = GrammarSpec.regex(STAT_REGEX)
    engine = engines(tiny_target, tiny_draft)[mode]
    expected = constrained_distribution(tiny_target, prompt, params)
    cells = {combo: i for i, combo in enumerate(expected)}
    samples, partial = [], 0
    for seed in range(N):
        out = engine.generate(prompt, SamplingParams(**{**params.__dict__, "seed": seed, "grammar": grammar}))
        samples.append(cells[tuple(out.token_ids[:3])])
        assert out.finish_reason == "eos"
        partial += any(0 < r.num_accepted < r.num_drafted and r.num_drafted >= 2 for r in out.rounds)
    assert partial > 25  # drafts of several tokens were partly rejected
    assert detectable_tv(list(expected.values()), N) < 0.1  # power: docs/exactness.md
    assert chi_square_p_value(samples, list(expected.values())) > ALPHA
    draft_probs = constrained_distribution(tiny_draft, prompt, params)
    assert chi_square_p_value(samples, list(draft_probs.values())) < NEGATIVE_ALPHA
