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


CPU_COSTS = (1.0, 1.4, 1.4, 1.4, 1.36, 1.38, 1.4, 1.43, 1.47, 1.51, 1.55, 1.6, 1.64, 1.68, 1.73, 1.77, 1.8)  # this host


def propose(session, context, costs, max_tokens=16):
    return session.propose(context, max_tokens, SamplingParams(), torch.Generator(), DraftBudget(max_tokens, pass_costs=costs))


def test_a_long_match_is_proposed_as_far_as_it_pays_and_a_likely_miss_not_at_all():
    session = NgramDrafter(vocab_size=50).open()
    copy = list(range(10, 30))
    three_gram = propose(session, copy + [1] + copy[:3], CPU_COSTS)  # "10 11 12" occurred: a copy is likely
    assert 8 <= len(three_gram) <= 16 and three_gram == copy[3 : 3 + len(three_gram)]
    one_gram = NgramDrafter(vocab_size=50).open()  # a lone token's continuation is a guess (prior 0.2)
    assert propose(one_gram, [5, 6, 7, 6], CPU_COSTS) == []
    flat = (1.0,) * 17  # a pass as cheap as a plain step (a GPU): everything the match offers is worth it
    assert propose(NgramDrafter(vocab_size=50).open(), [5, 6, 7, 6], flat) == [7, 6]
    steep = tuple(1.0 + length for length in range(17))  # every token costs a plain step: never pays
    assert propose(NgramDrafter(vocab_size=50).open(), copy + [1] + copy[:3], steep) == []


def test_the_length_maximises_expected_tokens_per_cost():
    session = NgramDrafter(vocab_size=50).open()
    for n in (1, 2, 3):
        length = session.best_length(n, 16, CPU_COSTS)
        value = (1 + session.expected_accepted(n, length)) / CPU_COSTS[length]
        assert all(value >= (1 + session.expected_accepted(n, other)) / CPU_COSTS[other] - 1e-12
                   for other in range(1, 17))
        assert length == 0 or value > 1.0  # proposed only when it beats a plain step


def test_every_match_is_scored_on_what_followed_skipped_or_cut_short():
    session = NgramDrafter(vocab_size=50).open()
    context = [4, 1, 2, 3, 9, 5, 8, 1, 2]  # the tail "1 2" matches as a 2-gram
    steep = tuple(1.0 + length for length in range(5))
    before = session.rate(2, 0)
    assert propose(session, context, steep, 4) == []  # skipped: not worth a pass at these costs
    for token in [3, 9, 5, 8]:  # the text goes on exactly as the skipped match said
        context = context + [token]
        propose(session, context, steep, 4)
    assert session.rate(2, 0) > before  # scored: every one of its 4 tokens would have been accepted
    assert session.counts[(2, 0)] == pytest.approx([4 * before + 1, 5])
    assert session.counts[(2, 2)][1] == pytest.approx(4 + 2)  # positions 2 and 3 share a bucket

    cut = NgramDrafter(vocab_size=50).open()
    copy = list(range(10, 30))
    context = copy + [1] + copy[:3]
    linear = tuple(1.0 + 0.5 * length for length in range(17))  # each draft token costs half a step
    sent = propose(cut, context, linear, 16)
    assert 0 < len(sent) < 16  # a 3-gram proposal, shorter than the 16 tokens its match offered
    cut.accept(VerifyResult([], [], 99, [0], [len(sent)]))  # rejected at its first token: 99 came instead
    propose(cut, context + [99], linear, 16)
    assert cut.counts[(3, 0)] == pytest.approx([4 * 0.87, 5])  # one more reached, none accepted
    assert cut.counts[(3, 1)] == pytest.approx([4 * 0.91, 4])  # nothing past the miss was reached
