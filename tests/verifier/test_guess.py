"""The verifier's side of guessed draft-ahead (``VerifierWorker.verify_guess``): guesses wait for
the verdict they guess; the one whose context is the verdict's is verified at once as the next
round, exactly as that round sent by a drafter would be; none is verified when none matches, or
when the drafter cancels them."""

from __future__ import annotations

import threading

from drafter.tree_growth import one_hot_chain, tree_from_levels
from specgrove.sampling import SamplingParams
from specgrove.round import Round
from verifier.worker import VerifierWorker, empty_tree

GREEDY = SamplingParams()


def chain(tokens):
    return tree_from_levels([one_hot_chain(tokens)])


def first_round(target, prompt: str):
    """A worker that verified round 1 (a plain step) of session "s": (worker, context, its token)."""
    worker = VerifierWorker(target)
    context = target.encode(prompt)
    result, *_ = worker.verify(Round("s", 1, tuple(context), GREEDY, 0), empty_tree())
    return worker, context, result.next_token


def test_the_guess_that_matches_the_verdict_is_verified_as_the_next_round(tiny_target):
    worker, context, token = first_round(tiny_target, "the cat sat")
    expected, *_ = VerifierWorker(tiny_target).verify(Round("t", 2, tuple(context + [token]), GREEDY, 0), chain([5, 6]))
    other = (token + 1) % tiny_target.vocab_size
    index, (result, _, features, _) = worker.verify_guess(
        Round("s", 2, tuple(context), GREEDY, 0, features_from=0), [([other], chain([5, 6])), ([token], chain([5, 6]))])
    assert index == 1 and result == expected
    assert features.shape[0] == len(result.accepted_tokens) + 1  # from the guessed context's last token on
    assert worker.verify_guess(Round("s", 3, tuple(context), GREEDY, 0), [([other], chain([5]))]) is None  # step 2 was verified
    assert worker.verify_guess(Round("s", 2, tuple(context), GREEDY, 0), [([other], chain([5]))]) is None  # no guess matches


def test_guesses_wait_for_their_verdict_and_can_be_cancelled(tiny_target):
    worker, context, token = first_round(tiny_target, "hello there")
    coming, *_ = VerifierWorker(tiny_target).verify(Round("t", 1, tuple(context + [token]), GREEDY, 0), empty_tree())
    guesses = [([(coming.next_token + 1) % tiny_target.vocab_size], chain([4])), ([coming.next_token], chain([4]))]
    answers, wanted = {}, threading.Event()
    wanted.set()
    waiting = threading.Thread(target=lambda: answers.update(early=worker.verify_guess(
        Round("s", 3, tuple(context + [token]), GREEDY, 0), guesses)))
    cancelled = threading.Thread(target=lambda: answers.update(cancelled=worker.verify_guess(
        Round("s", 9, tuple(context), GREEDY, 0), [([token], chain([4]))], timeout_s=60, wanted=wanted.is_set)))
    waiting.start()
    cancelled.start()
    verdict, *_ = worker.verify(Round("s", 2, tuple(context + [token]), GREEDY, 0), empty_tree())  # round 2: the verdict awaited
    waiting.join(30)
    assert verdict.next_token == coming.next_token
    index, (result, *_) = answers["early"]
    assert index == 1  # it waited for round 2's verdict, then took the guess that matched it
    wanted.clear()
    worker.wake()
    cancelled.join(5)
    assert not cancelled.is_alive() and answers["cancelled"] is None


def test_guesses_are_of_their_rounds_verdict_and_claim_no_step(tiny_target):
    """A verdict of the guessed round's step from another tree (another verification of that
    step) is not the one guessed. Guessed rounds, two in a row, leave the session's step where the
    drafter's rounds left it, so the orchestrator may still ask for the step after that one (a
    plain step after a failed draft) and be served."""
    worker, context, token = first_round(tiny_target, "the cat sat")  # round 1: a plain step (no tree)
    assert worker.verify_guess(Round("s", 2, tuple(context), GREEDY, 0), [([token], chain([5]))], chain=[9],
                               timeout_s=0.2) is None
    index, (second, *_) = worker.verify_guess(Round("s", 2, tuple(context), GREEDY, 0), [([token], chain([5]))], chain=[])
    after_second = context + [token] + second.accepted_tokens + [second.next_token]
    found = worker.verify_guess(Round("s", 3, tuple(context + [token]), GREEDY, 0), [
        (second.accepted_tokens + [second.next_token], chain([6]))], chain=[5])
    assert found is not None and len(after_second) > len(context) + 1
    plain, *_ = worker.verify(Round("s", 2, tuple(context + [token]), GREEDY, 0), empty_tree())  # not stale: guesses claim no step
    expected, *_ = VerifierWorker(tiny_target).verify(Round("t", 1, tuple(context + [token]), GREEDY, 0), empty_tree())
    assert plain == expected
