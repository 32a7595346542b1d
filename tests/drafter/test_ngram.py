import torch

from drafter.ngram import NgramDrafter, lookup
from specgrove.sampling import SamplingParams


def test_lookup_continues_the_latest_longest_match():
    context = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert lookup(context, 2, max_ngram=3, min_ngram=1) == [7, 8]  # latest earlier "1 2 3" is followed by 7 8


def test_lookup_can_prefer_the_earliest_match():
    context = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert lookup(context, 2, max_ngram=3, min_ngram=1, earliest=True) == [9, 1]


def test_lookup_falls_back_to_shorter_ngrams_and_to_nothing():
    assert lookup([4, 5, 6, 5], 3, max_ngram=3, min_ngram=1) == [6, 5]
    assert lookup([1, 2, 3], 3, max_ngram=3, min_ngram=1) == []
    assert lookup([1, 2, 1], 0, max_ngram=3, min_ngram=1) == []


def test_proposal_q_is_one_hot_on_the_proposed_tokens():
    session = NgramDrafter(vocab_size=10).open()
    proposal = session.propose([1, 2, 3, 1, 2], 4, SamplingParams(), torch.Generator())
    assert proposal.tokens == [3, 1, 2]
    assert proposal.q.shape == (3, 10)
    assert proposal.q.argmax(-1).tolist() == [3, 1, 2] and proposal.q.sum().item() == 3
