"""Workers refuse stale rounds by step: an abandoned call for an older round (an orchestrator that timed
out and moved on) must not move a cache a newer round owns; a retry of the same round is served."""

from __future__ import annotations

import pytest

from drafter.tree_growth import ModelDrafter, Pass, tree_from_levels
from drafter.worker import DrafterWorker
from orchestrator.sequoia import TreeShape
from specgrove.budget import DraftBudget
from specgrove.round import Round
from specgrove.errors import StaleRound
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult
from verifier.worker import VerifierWorker, empty_tree

PARAMS = SamplingParams(max_new_tokens=8)
CHAIN = list(TreeShape.chain(3).parents)


def test_the_verifier_refuses_an_older_round_and_serves_a_retry(tiny_target):
    worker = VerifierWorker(tiny_target, keep_features=False)
    context = tiny_target.encode("the cat sat")
    first, *_ = worker.verify(Round("s", 2, tuple(context), PARAMS, 0), empty_tree())
    again, *_ = worker.verify(Round("s", 2, tuple(context), PARAMS, 0), empty_tree())  # a retry of round 2
    assert again.next_token == first.next_token
    worker.verify(Round("s", 3, tuple(context + [first.next_token]), PARAMS, 0), empty_tree())
    with pytest.raises(StaleRound, match="round 2 is older than round 3"):
        worker.verify(Round("s", 2, tuple(context), PARAMS, 0), empty_tree())
    assert worker.verify(Round("other", 1, tuple(context), PARAMS, 0), empty_tree())[0].next_token == first.next_token


def test_the_drafter_stops_an_overtaken_round_and_ignores_its_verdict(tiny_target, tiny_draft):
    worker = DrafterWorker(ModelDrafter(tiny_draft))
    context = tiny_target.encode("the cat sat")
    stale = worker.levels(Round("s", 1, tuple(context), PARAMS, 0), CHAIN, DraftBudget(3))
    next(stale)  # round 1 drew its first level, then the orchestrator gave up on it
    fresh = tree_from_levels(list(worker.levels(Round("s", 2, tuple(context), PARAMS, 0), CHAIN, DraftBudget(3))))
    assert fresh.size == 3
    with pytest.raises(StaleRound, match="round 1 was overtaken by round 2"):
        next(stale)  # it draws nothing more on the cache round 2 now owns
    with pytest.raises(StaleRound, match="round 1 is older than round 2"):
        next(worker.levels(Round("s", 1, tuple(context), PARAMS, 0), CHAIN, DraftBudget(3)))
    session = worker._sessions["s"]
    cached = list(session.sequence.node_tokens)
    worker.accept("s", 1, VerifyResult([], [], 0, [0], [1]))  # round 1's late verdict: ignored
    assert session.sequence.node_tokens == cached
    worker.accept("s", 2, VerifyResult([0, 1], fresh.tokens[:2].tolist(), 0, [1, 1, 0], [1, 1, 1]))
    assert session.sequence.node_tokens == [] and session.sequence.tokens == context + fresh.tokens[:2].tolist()


def test_a_released_run_cannot_reopen_a_cache_but_a_resumed_run_can(tiny_target, tiny_draft):
    """The client cancels mid-round: the run's Release may reach a worker before that round does."""
    context = tiny_target.encode("the cat sat")
    verifier = VerifierWorker(tiny_target, keep_features=False)
    drafter = DrafterWorker(ModelDrafter(tiny_draft))
    verifier.release("s", run="first")
    drafter.release("s", run="first")
    with pytest.raises(StaleRound, match="round 3 came after its run was released here"):
        verifier.verify(Round("s", 3, tuple(context), PARAMS, 0, run="first"), empty_tree())
    with pytest.raises(StaleRound, match="round 3 came after its run was released here"):
        next(drafter.levels(Round("s", 3, tuple(context), PARAMS, 0, run="first"), CHAIN, DraftBudget(3)))
    with pytest.raises(StaleRound, match="came after its run was released here"):
        verifier.prefix_features("s", context, 0, run="first")
    assert "s" not in verifier._sessions and "s" not in drafter._sessions  # nothing left to free
    verifier.verify(Round("s", 3, tuple(context), PARAMS, 0, run="resumed"), empty_tree())  # the session resumed: a new run
    assert len(list(drafter.levels(Round("s", 3, tuple(context), PARAMS, 0, run="resumed"), CHAIN, DraftBudget(3)))) == 3


def test_a_resumed_run_takes_the_session_over_from_a_dead_one(tiny_target, tiny_draft):
    """An orchestrator dies after its rounds reached the workers but before it committed them (a
    round run ahead, a verdict lost with it). The session resumes on another orchestrator, a new
    run, whose first round has a lower step than the dead run's last: both workers serve it, the
    same as a fresh session would, and refuse the dead run's rounds from then on. The dead run's
    late Release does not free the cache the new run now uses."""
    context = tiny_target.encode("the cat sat")
    verifier, fresh = VerifierWorker(tiny_target, keep_features=False), VerifierWorker(tiny_target, keep_features=False)
    drafter = DrafterWorker(ModelDrafter(tiny_draft))
    first, *_ = verifier.verify(Round("s", 1, tuple(context), PARAMS, 0, run="dead"), empty_tree())
    verifier.verify(Round("s", 2, tuple(context + [first.next_token]), PARAMS, 0, run="dead"), empty_tree())  # never committed
    list(drafter.levels(Round("s", 2, tuple(context + [first.next_token]), PARAMS, 0, run="dead"), CHAIN, DraftBudget(3)))
    resumed, *_ = verifier.verify(Round("s", 1, tuple(context), PARAMS, 0, run="resumed"), empty_tree())
    assert resumed.next_token == fresh.verify(Round("s", 1, tuple(context), PARAMS, 0, run="x"), empty_tree())[0].next_token
    levels = tree_from_levels(list(drafter.levels(Round("s", 1, tuple(context), PARAMS, 0, run="resumed"), CHAIN, DraftBudget(3))))
    assert levels.size == 3
    with pytest.raises(StaleRound, match="came after its run was released here"):
        verifier.verify(Round("s", 3, tuple(context), PARAMS, 0, run="dead"), empty_tree())
    with pytest.raises(StaleRound, match="came after its run was released here"):
        next(drafter.levels(Round("s", 3, tuple(context), PARAMS, 0, run="dead"), CHAIN, DraftBudget(3)))
    verifier.release("s", run="dead")
    drafter.release("s", run="dead")
    assert "s" in verifier._sessions and "s" in drafter._sessions  # still the resumed run's
    _, _, _, rows = verifier.verify(Round("s", 2, tuple(context + [resumed.next_token]), PARAMS, 0, run="resumed"), empty_tree())
    assert rows == 1  # its cache was kept: only the new token is fed
    verifier.release("s", run="resumed")
    drafter.release("s", run="resumed")
    assert "s" not in verifier._sessions and "s" not in drafter._sessions


def test_a_release_mid_round_stops_the_draft_and_leaves_no_cache(tiny_target, tiny_draft):
    worker = DrafterWorker(ModelDrafter(tiny_draft))
    levels = worker.levels(Round("s", 2, tuple(tiny_target.encode("the cat sat")), PARAMS, 0, run="r"), CHAIN, DraftBudget(3))
    next(levels)
    worker.release("s", run="r")
    with pytest.raises(StaleRound, match="round 2 was released here mid-round"):
        next(levels)
    assert "s" not in worker._sessions


def test_the_drafter_draws_its_levels_on_the_compute_thread(tiny_target, tiny_draft):
    """Model work of a drafter runs on specgrove.compute's one thread, level by level: its steps
    (sampling each level) and its passes."""
    from drafter.tree_growth import Level
    from specgrove.compute import on_compute_thread

    worker = DrafterWorker(ModelDrafter(tiny_draft))
    session = worker._session("s", 1)
    grow, where = session.grow, []

    def spied(*args, **kwargs):
        steps = grow(*args, **kwargs)
        reply = None
        while True:
            where.append(on_compute_thread())
            try:
                item = steps.send(reply)
            except StopIteration:
                return
            reply = yield item
            where.append(on_compute_thread())

    session.grow = spied
    run = Pass.run

    def spied_run(self):
        where.append(on_compute_thread())
        return run(self)

    Pass.run = spied_run
    try:
        levels = list(worker.levels(Round("s", 1, tuple(tiny_target.encode("the cat sat")), PARAMS, 0), CHAIN, DraftBudget(3)))
    finally:
        Pass.run = run
    assert len(levels) == 3 and all(isinstance(level, Level) for level in levels)
    assert len(where) >= 3 * 3 and all(where)
