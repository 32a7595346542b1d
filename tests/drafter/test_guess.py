"""Guessed draft-ahead's drawing (drafter/guess.py): each guess is the verdict it names (j chain
tokens, then one of the draft's best other tokens) and a chain whose q rows are exactly the draft's own
distributions after that guessed context, computed afresh token by token; the tokens are drawn
from them. So a verifier that takes a guess verifies a proposal whose q is the truth."""

from __future__ import annotations

import pytest
import torch

from drafter.feature_sequence import FeatureSequence, target_features
from drafter.guess import GuessSelection, guess_steps, likely_verdicts
from drafter.tree_growth import inline, run_alone
from drafter.worker import _twin
from specgrove.sampling import SamplingParams, truncate_top_n, warp

PROMPT = "the cat sat on the mat. the cat"


def dense(ids, probs, vocab: int = 4096):
    return torch.zeros(vocab).index_put((ids,), probs)


def primed(drafter, target, context):
    session = drafter.open()
    session.sequence.set_features(target_features(target, context[:-1]))
    return session


@pytest.mark.parametrize("width", [1, 2])
def test_each_guess_is_a_verdict_and_a_chain_drawn_from_the_q_it_reports(tiny_target, tiny_feature_drafter, width):
    context = tiny_target.encode(PROMPT)
    session = primed(tiny_feature_drafter, tiny_target, context)
    chain_shape = [-1, 0, 1]
    chain = [lv.tokens[0] for lv in session.grow_levels(context, chain_shape, SamplingParams(), None)]
    assert len(chain) == 3
    params = SamplingParams(temperature=1.0, top_k=8)
    generator = torch.Generator().manual_seed(0)
    max_lens = [3, 3, 2, 1]
    guesses = run_alone(guess_steps(_twin(session), context, chain, (params, generator), max_lens,
                                    selection=GuessSelection(width=width)))
    # j = 0..3 accepted, then one token: `width` different ones per j
    assert [len(g.emitted) for g in guesses] == [j + 1 for j in range(4) for _ in range(width)]
    assert len({tuple(g.emitted) for g in guesses}) == len(guesses)
    for n, guess in enumerate(guesses):
        j = n // width
        assert guess.emitted[:j] == chain[:j]
        assert j == len(chain) or guess.emitted[j] != chain[j]  # not the token the chain drafted there
        assert 1 <= len(guess.levels) <= max_lens[j]
        assert_drawn_from_true_q(guess, primed(tiny_feature_drafter, tiny_target, context), context, params)
    # the best other tokens after d_j are the draft's own: the x's for j = 0 follow its runner-up at the root
    root = run_alone(session.sequence.fork().logits_for_steps(context))[0].clone()
    root[chain[0]] = float("-inf")
    assert [g.emitted for g in guesses[:width]] == [[x] for x in root.topk(width).indices.tolist()]


def assert_drawn_from_true_q(guess, fresh, context, params) -> None:
    """Each level of the guess's chain is one token drawn from q rows equal to the draft's own
    distribution after the guessed path, computed afresh token by token (``fresh``: a session with
    the target's features of the context; the guessed pairs read drafted ones)."""
    path = context + guess.emitted
    for depth, level in enumerate(guess.levels):
        assert level.parents == [depth - 1]
        ids, probs = level.q_rows[depth]
        want_ids, want_probs = truncate_top_n(warp(fresh.sequence.logits_for(path, 1)[0], params), fresh.top_n)
        assert torch.allclose(dense(ids, probs), dense(want_ids, want_probs), atol=1e-5)  # ties may reorder
        assert level.tokens[0] in ids.tolist()
        path = path + level.tokens


def test_scored_guesses_are_the_verdicts_the_draft_deems_most_likely(tiny_target, tiny_feature_drafter):
    """count = 4: the four verdicts (j, x) with the highest q(d_1) ⋯ q(d_j) · q(x) (T = 1) over every
    j that may be guessed (here not j = 1), each with a chain drawn from its true q."""
    context = tiny_target.encode(PROMPT)
    session = primed(tiny_feature_drafter, tiny_target, context)
    chain = [lv.tokens[0] for lv in session.grow_levels(context, [-1, 0, 1], SamplingParams(), None)]
    params = SamplingParams(temperature=1.0, top_k=8)
    max_lens = [3, 0, 2, 1]
    guesses = run_alone(guess_steps(_twin(session), context, chain, (params, torch.Generator().manual_seed(0)),
                                    max_lens, selection=GuessSelection(count=4)))
    fresh = primed(tiny_feature_drafter, tiny_target, context)
    logits = [fresh.sequence.logits_for(context + chain[:j], 1)[0] for j in range(len(chain) + 1)]
    want = likely_verdicts(logits, chain, 4, max_lens)
    assert len(want) == 4 and all(j != 1 for j, _ in want)
    assert sorted((len(g.emitted) - 1, g.emitted[-1]) for g in guesses) == sorted(want)
    for guess in guesses:
        j = len(guess.emitted) - 1
        assert guess.emitted[:j] == chain[:j] and (j == len(chain) or guess.emitted[j] != chain[j])
        assert_drawn_from_true_q(guess, primed(tiny_feature_drafter, tiny_target, context), context, params)
    # the scores themselves: a 2-token chain over a 3-token vocabulary, by hand
    rows = [torch.log(torch.tensor(p)) for p in ([0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25])]
    # (0, 1) .2, (0, 2) .1, (1, 0) .7 * .1 = .07, (1, 2) .21, (2, 0) .7 * .6 * .5 = .21, (2, 1/2) .105
    assert likely_verdicts(rows, [0, 1], 3) in ([(1, 2), (2, 0), (0, 1)], [(2, 0), (1, 2), (0, 1)])
    assert likely_verdicts(rows, [0, 1], 2, [1, 0, 1]) == [(2, 0), (0, 1)]


def test_guessing_leaves_the_sessions_cache_as_it_was(tiny_target, tiny_feature_drafter):
    context = tiny_target.encode(PROMPT)
    session = primed(tiny_feature_drafter, tiny_target, context)
    chain = [lv.tokens[0] for lv in session.grow_levels(context, [-1, 0, 1, 2], SamplingParams(), None)]
    before = (list(session.sequence.tokens), list(session.sequence.node_tokens), session.sequence.kv[0].clone())
    run_alone(guess_steps(_twin(session), context, chain, (SamplingParams(), None), [4, 4, 4, 3, 2]))
    assert (session.sequence.tokens, session.sequence.node_tokens) == before[:2]
    assert torch.equal(session.sequence.kv[0], before[2])
    again = [lv.tokens[0] for lv in inline(session.grow(context, [-1, 0, 1, 2], SamplingParams(), None))]
    assert again == chain


def test_the_rounds_own_logits_give_the_same_guesses_as_feeding_the_chain_again(tiny_target, tiny_feature_drafter):
    """Guesses right after the round's drawing reuse its cached nodes d_1..d_{K−1} and the logits
    after them (here 3 passes instead of 5); a cache without them feeds the context's last pair
    and the chain again: the same greedy guesses."""
    context = tiny_target.encode(PROMPT)
    session = primed(tiny_feature_drafter, tiny_target, context)
    chain = [lv.tokens[0] for lv in session.grow_levels(context, [-1, 0, 1], SamplingParams(), None)]
    warm, cold = _twin(session), _twin(session)
    cold.sequence.root_logits = None
    assert warm.sequence.drawn_chain_logits(context, chain) is not None
    assert cold.sequence.drawn_chain_logits(context, chain) is None
    (reused, warm_passes), (fed, cold_passes) = [
        counted(guess_steps(twin, context, chain, (SamplingParams(), None), [3, 3, 2, 1])) for twin in (warm, cold)]
    assert [(g.emitted, [lv.tokens for lv in g.levels]) for g in reused] == [
        (g.emitted, [lv.tokens for lv in g.levels]) for g in fed]
    assert (warm_passes, cold_passes) == (3, 5)


def counted(steps):
    """(what ``steps`` returns, the passes it asked for), each pass run at once."""
    count, reply = 0, None
    while True:
        try:
            item = steps.send(reply)
        except StopIteration as done:
            return done.value, count
        count += 1
        reply = item.run()
