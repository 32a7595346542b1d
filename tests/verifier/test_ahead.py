"""Steps ahead (verifier/ahead.py): the next plain step verified as soon as this one's verdict is
in, taken only by a request for exactly that round; its tokens are the step's own (its random
draws are keyed by (seed, step))."""

from __future__ import annotations

from specgrove.config import STEPS_AHEAD
from specgrove.round import Round
from specgrove.sampling import SamplingParams
from verifier.ahead import StepsAhead
from verifier.worker import VerifierWorker, empty_tree

PARAMS = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=16)


def outcomes(worker: VerifierWorker) -> dict[str, float]:
    registry = worker.metrics.registry
    return {o: registry.get_sample_value("specgrove:verify_ahead_steps_total", {"outcome": o}) or 0
            for o in ("hit", "miss", "unused")}


def steps(tiny_target, ahead_room: int, n: int, session: str = "s") -> tuple[list[int], list[bool], VerifierWorker]:
    """n plain steps of one sampled session, each asked for as the orchestrator does: (tokens,
    whether each came from a step run ahead, the worker)."""
    worker = VerifierWorker(tiny_target)
    ahead = StepsAhead(worker)
    r = Round(session, 1, tuple(tiny_target.encode("my name is")), PARAMS, 7, 3)
    tokens, ran_ahead = [], []
    for _ in range(n):
        stepped = ahead.decode(r, ahead_room)
        token = stepped.verdict.result.next_token
        tokens.append(token)
        ran_ahead.append(stepped.ahead)
        r = r.following([token])
    ahead.drop(session)
    return tokens, ran_ahead, worker


def test_steps_run_ahead_are_taken_and_emit_the_steps_own_tokens(tiny_target):
    plain, never, _ = steps(tiny_target, 0, 12)
    piped, taken, worker = steps(tiny_target, 100, 12)
    assert piped == plain  # the same sampled tokens: each step's draws keyed by (seed, step)
    assert never == [False] * 12
    assert taken == [False] + [True] * 11  # every step after the first was run ahead
    counts = outcomes(worker)
    assert counts["hit"] == 11 and counts["miss"] == 0
    assert 1 <= counts["unused"] <= STEPS_AHEAD  # the 13th (and 14th), never asked for


def test_a_step_asked_otherwise_is_verified_afresh_and_none_runs_past_the_room(tiny_target):
    worker = VerifierWorker(tiny_target)
    ahead = StepsAhead(worker)
    r = Round("s", 1, tuple(tiny_target.encode("my name is")), PARAMS, 7, 3)
    first = ahead.decode(r, 100).verdict.result.next_token
    other = r.following([(first + 1) % tiny_target.vocab_size])  # not the context the verdict left
    fresh = ahead.decode(other, 0)
    assert not fresh.ahead
    assert fresh.verdict.result.next_token == worker.verify(other, empty_tree()).result.next_token  # a retry
    assert 1 <= outcomes(worker)["miss"] <= STEPS_AHEAD  # the steps under way, waited for and dropped
    last = ahead.decode(other.following([fresh.verdict.result.next_token]), 1)  # its one token is the last
    assert not last.ahead and last.steps_ahead == 0
    ahead.drop("s")
    assert outcomes(worker)["hit"] == 0 and outcomes(worker)["unused"] == 0


def test_steps_run_ahead_stay_within_the_room_and_the_depth(tiny_target):
    worker = VerifierWorker(tiny_target)
    ahead = StepsAhead(worker, depth=2)
    r = Round("s", 1, tuple(tiny_target.encode("my name is")), PARAMS, 7, 3)
    first = ahead.decode(r, 3)  # this step and two more may be emitted: both started, one by one
    assert first.steps_ahead == 1  # the second starts when the first is done
    r = r.following([first.verdict.result.next_token])
    second = ahead.decode(r, 2)
    assert second.ahead and second.steps_ahead == 1  # the third; no fourth: the room ends there
    r = r.following([second.verdict.result.next_token])
    third = ahead.decode(r, 1)
    assert third.ahead and third.steps_ahead == 0
    assert outcomes(worker) == {"hit": 2, "miss": 0, "unused": 0}


def test_sessions_never_released_are_forgotten_past_the_workers_sessions(tiny_target):
    """An orchestrator that died releases nothing: the least recently asked sessions' steps go."""
    worker = VerifierWorker(tiny_target, max_sessions=2)
    ahead = StepsAhead(worker)
    for name in ("a", "b", "c"):
        ahead.decode(Round(name, 1, tuple(tiny_target.encode("my name is")), PARAMS, 7, 3), 100)
    assert list(ahead._sessions) == ["b", "c"]
    assert outcomes(worker)["unused"] >= 1  # a's step under way
