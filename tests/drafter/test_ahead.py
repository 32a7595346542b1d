"""Draft-ahead's bookkeeping on a drafter (drafter/ahead.py): which round it runs ahead, and when
a request gets that round's verdict rather than a fresh round. The served path (real gRPC,
Redis, models) is tested in tests/services/test_served_exactness.py and test_draft_ahead.py."""

from __future__ import annotations

import threading
from dataclasses import replace

from drafter.ahead import AheadRounds
from specgrove.budget import DraftBudget
from specgrove.metrics import WorkerMetrics
from specgrove.round import DraftOrder, Round, RoundReport
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult


def request(context: list[int], step: int = 3, room: int = 20, max_len: int = 4) -> DraftOrder:
    return DraftOrder(Round("s", step, tuple(context), SamplingParams(), 7, run="r"), (-1, 0, 1, 2),
                      DraftBudget(max_len), "v:1", 5.0, ahead=True, ahead_room=room)


def verdict(accepted: list[int], next_token: int) -> RoundReport:
    return RoundReport(VerifyResult([], accepted, next_token, [], []), 4, 4)


def next_request(order: DraftOrder, report: RoundReport) -> DraftOrder | None:
    return order.following([*report.result.accepted_tokens, report.result.next_token])


def test_the_next_round_extends_the_context_by_the_verdict_and_stays_within_the_room():
    following = next_request(request([1, 2, 3]), verdict([4, 5], 6))
    assert following.round.context == (1, 2, 3, 4, 5, 6)
    assert following.round.step == 4 and following.round.seed == 7 and following.round.run == "r"
    assert not following.ahead and following.budget.max_len == 4 and following.shape_parents == (-1, 0, 1, 2)
    assert following.ahead_room == 17  # its own room: 20 less the 3 tokens round 3 emitted
    assert next_request(request([1], room=5), verdict([4, 5], 6)).budget.max_len == 1  # 2 left: 1 draft + 1
    assert next_request(request([1], room=4), verdict([4, 5], 6)) is None  # 1 left: a plain step, nothing to draft
    assert next_request(request([1], room=3), verdict([4, 5], 6)) is None  # the session is done


def outcomes(metrics: WorkerMetrics) -> dict[str, float]:
    return {o: metrics.registry.get_sample_value("specgrove:draft_ahead_rounds_total", {"outcome": o}) or 0.0
            for o in ("hit", "miss", "unused")}


def test_a_request_for_exactly_the_round_run_ahead_gets_its_verdict_and_any_other_is_drawn_afresh():
    metrics = WorkerMetrics("draft", 4)
    ahead = AheadRounds(4, metrics)
    ran, release = [], threading.Event()

    def run_round(order, timeout):
        ran.append(list(order.round.context))
        release.wait(5)
        return verdict([9], 10)

    release.set()
    ahead.start(request([1, 2]), verdict([3], 4), run_round)  # round 3's verdict: round 4 runs ahead
    asked = replace(next_request(request([1, 2]), verdict([3], 4)), ahead=True, ahead_room=15,
                    budget=DraftBudget(2))  # the orchestrator's order for round 4 (its own plan and permission)
    reply = ahead.take(asked, arrived=1e12)
    assert ran == [[1, 2, 3, 4]] and reply.result.accepted_tokens == [9] and reply.timing.ahead
    assert reply.timing.overlap_ms > 0  # it had all run before the (far future) arrival
    assert ahead.take(asked, arrived=0.0) is None  # taken once

    ahead.start(request([1, 2]), verdict([3], 4), run_round)
    other = next_request(request([1, 2]), verdict([3], 5))  # the verdict the orchestrator holds differs
    assert ahead.take(other, arrived=0.0) is None
    assert outcomes(metrics) == {"hit": 1.0, "miss": 1.0, "unused": 0.0}

    def failing(order, timeout):
        raise RuntimeError("verifier gone")

    ahead.start(request([1, 2]), verdict([3], 4), failing)
    assert ahead.take(next_request(request([1, 2]), verdict([3], 4)), arrived=0.0) is None  # drafted afresh
    ahead.start(request([1, 2]), verdict([3], 4), run_round)
    ahead.drop("s")  # the session ended: never asked for
    assert outcomes(metrics) == {"hit": 1.0, "miss": 2.0, "unused": 1.0}


def test_a_request_waits_for_the_round_still_running_ahead():
    ahead = AheadRounds(2)
    started, release = threading.Event(), threading.Event()

    def run_round(order, timeout):
        started.set()
        release.wait(5)
        return verdict([7], 8)

    ahead.start(request([1]), verdict([2], 3), run_round)
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    reply = ahead.take(next_request(request([1]), verdict([2], 3)), arrived=0.0)
    assert reply is not None and reply.result.accepted_tokens == [7]
