import pytest
import torch

from drafter.ngram import NgramDrafter, lookup
from specgrove.budget import DraftBudget
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult


def test_lookup_continues_the_latest_longest_match():
    context = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert lookup(context, 2, max_ngram=3, min_ngram=1) == [7, 8]  # latest earlier "1 2 3" is followed by 7 8


def test_lookup_can_prefer_the_earliest_match():
    context = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert lookup(context, 2, max_ngram=3, min_ngram=1, earliest=True) == [9, 1]


def test_lookup_skips_an_occurrence_too_close_to_the_tail_for_a_full_continuation():
    context = [7, 1, 2, 1, 2, 1, 2]  # the latest earlier "1 2" ends just before the tail
    assert lookup(context, 3, max_ngram=2, min_ngram=1) == [1, 2, 1]  # an earlier period offers all 3
    assert lookup([5, 1, 2, 1, 2], 4, max_ngram=2, min_ngram=1) == [1, 2]  # none offers 4: the longest


def test_lookup_falls_back_to_shorter_ngrams_and_to_nothing():
    assert lookup([4, 5, 6, 5], 3, max_ngram=3, min_ngram=1) == [6, 5]
    assert lookup([1, 2, 3], 3, max_ngram=3, min_ngram=1) == []
    assert lookup([1, 2, 1], 0, max_ngram=3, min_ngram=1) == []


def test_the_session_proposes_only_what_the_match_supports():
    session = NgramDrafter(vocab_size=10).open()
    assert session.propose([1, 2, 3, 1, 2], 4, SamplingParams(), torch.Generator()) == [3, 1, 2]  # no padding


def test_a_match_expected_to_lose_is_skipped_but_scored_on_what_followed():
    session = NgramDrafter(vocab_size=10).open()
    context = [4, 1, 2, 3, 9, 5, 1, 2]  # the tail "1 2" matches as a 2-gram (prior gain 0.6)
    costly = DraftBudget(4, min_gain=1.0)  # a pass that costs 2 plain steps needs 1 accepted token
    assert session.propose(context, 4, SamplingParams(), torch.Generator(), costly) == []  # skipped
    for token in [3, 9, 5, 1]:  # the text goes on exactly as the skipped proposal said
        context = context + [token]
        session.propose(context, 4, SamplingParams(), torch.Generator(), costly)
    assert session.expected_gain(2) == pytest.approx((4 * 0.6 + 4) / 5)  # scored: 4 would have been accepted
    assert session.expected_gain(2) > 1.0
    assert session.propose([4, 1, 2, 3, 9, 5, 1, 2], 4, SamplingParams(), torch.Generator(), costly) == [3, 9, 5, 1]
    session.accept(VerifyResult([], [], 7, [0], [4]))  # that proposal missed: 0 accepted
    assert session.expected_gain(2) == pytest.approx((4 * 0.6 + 4) / 6)
    cheap = DraftBudget(4, min_gain=0.05)  # a pass as cheap as a plain step: everything is worth proposing
    assert NgramDrafter(vocab_size=10).open().propose([1, 2, 3, 1], 4, SamplingParams(), torch.Generator(), cheap)
