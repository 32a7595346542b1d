"""Placement over the orchestrator's workers: discovery of the workers behind a name, routing of
new sessions by predicted pass time, sessions kept where their cache is, failed or draining workers
skipped."""

import time

import pytest

from orchestrator.placement import Pool, Workers, expand


def sessions(workers: Workers, n: int, start: int = 0):
    return [workers.place(f"s{i}") for i in range(start, start + n)]


def measured(workers: Workers, **pass_ms: float) -> None:
    for address, ms in pass_ms.items():
        workers.load(address).pass_ms = ms


def test_names_expand_to_every_worker_behind_them(tmp_path):
    resolve = {"verifier-pods": ["10.0.0.7:50051", "10.0.0.8:50051"]}
    assert expand("dns:///verifier-pods:50051", lambda host, port: resolve[host]) == [
        ("10.0.0.7:50051", "verifier-pods"), ("10.0.0.8:50051", "verifier-pods")]
    assert [a for a, _ in expand("ipv4:127.0.0.1:1,127.0.0.2:2")] == ["127.0.0.1:1", "127.0.0.2:2"]
    assert expand("localhost:5") == [("localhost:5", None)]
    assert ("127.0.0.1:7", "localhost") in expand("dns:///localhost:7")  # the system's resolver
    listed = tmp_path / "pods"
    listed.write_text("a:1\n# a comment\nb:2  # another\n")
    pool = Pool((f"file:{listed}",), resolve_s=0.1)
    assert pool.addresses() == ("a:1", "b:2")
    listed.write_text("b:2\nc:3\n")  # a pod left, another came
    assert pool.addresses() == ("a:1", "b:2")  # until the next look
    time.sleep(0.15)
    assert pool.addresses() == ("b:2", "c:3")


def test_equal_verifiers_share_new_sessions_and_drafters_alternate():
    workers = Workers(("d1", "d2"), ("v1", "v2"), retry_s=60)
    measured(workers, v1=20.0, v2=20.0)
    placed = sessions(workers, 8)
    assert sorted(p.verifier for p in placed) == ["v1"] * 4 + ["v2"] * 4
    assert sorted(p.drafter for p in placed) == ["d1"] * 4 + ["d2"] * 4


def test_a_slow_verifier_gets_new_sessions_only_once_the_fast_one_is_loaded_past_it():
    workers = Workers((), ("fast", "slow"), retry_s=60)
    measured(workers, fast=20.0, slow=300.0)
    assert [p.verifier for p in sessions(workers, 8)] == ["fast"] * 8
    workers.load("fast").sessions = 200  # another orchestrator's sessions fill its passes
    assert workers.place("late").verifier == "slow"


def test_a_verifier_not_measured_yet_is_tried_and_a_session_keeps_its_own():
    workers = Workers((), ("v1", "v2"), retry_s=60)
    measured(workers, v1=20.0)
    workers.load("v1").sessions = 1
    assert workers.place("s0").verifier == "v2"  # taken as fast as the fastest known, and it holds no session
    assert workers.place("resumed", prefer="v1").verifier == "v1"  # a resumed session where its cache is
    assert not workers.should_move("v1")


def test_failed_draining_and_departed_workers_take_no_new_sessions_and_lose_theirs():
    workers = Workers(("d1", "d2"), ("v1", "v2", "v3"), retry_s=0.2)
    measured(workers, v1=20.0, v2=20.0, v3=20.0)
    workers.mark_down("v2")
    workers.load("v3").draining = True
    workers.load("d1").draining = True
    placed = sessions(workers, 4)
    assert {p.verifier for p in placed} == {"v1"} and {p.drafter for p in placed} == {"d2"}
    assert workers.should_move("v2") and workers.should_move("v3") and not workers.should_move("v1")
    assert workers.best_verifier(exclude="v1") == "v1"  # nothing else can take it: it stays
    assert workers.should_move("v9")  # not behind the name any more
    assert workers.next_live(("d1", "d2"), "d2") == "d2"  # d1 drains
    time.sleep(0.25)
    assert workers.live("v2") and not workers.should_move("v2")


def test_when_every_verifier_is_down_sessions_are_placed_anyway():
    workers = Workers((), ("v1", "v2"), retry_s=60)
    for v in ("v1", "v2"):
        workers.mark_down(v)
    assert workers.place("s").drafter == "" and workers.place("s").verifier in ("v1", "v2")


def test_a_name_with_no_worker_behind_it_is_unavailable_not_an_internal_error(tmp_path):
    from specgrove.errors import Unavailable

    empty = tmp_path / "none"
    empty.write_text("")
    workers = Workers((), (f"file:{empty}",), retry_s=60)
    with pytest.raises(Unavailable, match="no verifier is reachable"):
        workers.place("s")


def round_trips(workers: Workers, **rtt_ms: float) -> None:
    for address, ms in rtt_ms.items():
        for jitter in (0.0, 40.0, 7.0):  # queueing only adds: the least is the path's own
            workers.load(address).rtt.add(ms + jitter)


def test_a_far_verifier_gets_new_sessions_only_once_the_near_one_is_loaded_past_it():
    workers = Workers((), ("near", "far"), retry_s=60)
    measured(workers, near=20.0, far=20.0)
    round_trips(workers, near=0.5, far=60.0)
    assert [p.verifier for p in sessions(workers, 8)] == ["near"] * 8
    far = workers.round_ms("", "far", 20.0)
    assert far == pytest.approx(60.0 + workers.load("far").predicted_ms(20.0))  # the least round trip, not 100 ms
    workers.load("near").sessions = 200
    assert workers.place("late").verifier == "far"


def test_each_drafter_is_paired_with_the_verifier_it_is_near():
    """Two zones: each drafter reports a short link to the verifier beside it and a long one to
    the other; sessions go to a drafter and the verifier in its zone, both zones used."""
    workers = Workers(("d-east", "d-west"), ("v-east", "v-west"), retry_s=60)
    measured(workers, **{"v-east": 20.0, "v-west": 20.0})
    workers.load("d-east").draft_pass_ms = workers.load("d-west").draft_pass_ms = 3.0
    workers.load("d-east").links = {"v-east": 1.0, "v-west": 80.0}
    workers.load("d-west").links = {"v-east": 80.0, "v-west": 1.0}
    placed = sessions(workers, 8)
    assert sorted((p.drafter, p.verifier) for p in placed) == [("d-east", "v-east")] * 4 + [("d-west", "v-west")] * 4
    # a session leaving its verifier goes to the one best for its drafter
    workers.load("v-west").draining = True
    assert workers.best_verifier(exclude="v-west", drafter="d-west") == "v-east"
    workers.load("v-west").draining = False
    workers.load("v-east").draining = True
    assert workers.best_verifier(exclude="v-east", drafter="d-east") == "v-west"


def test_a_drafter_not_linked_to_a_verifier_yet_is_assumed_as_near_as_the_orchestrator_is():
    workers = Workers(("d1",), ("v1", "v2"), retry_s=60)
    measured(workers, v1=20.0, v2=20.0)
    round_trips(workers, v1=1.0, v2=30.0)
    workers.load("d1").links = {"v1": 2.0}  # it has sent rounds to v1 only
    assert workers.round_ms("d1", "v2", 20.0) == pytest.approx(30.0 + workers.load("v2").predicted_ms(20.0))
    assert workers.place("s").verifier == "v1"


def test_a_drafter_is_paired_with_the_verifier_in_its_own_process():
    """Two ``serve worker`` processes, each named as a drafter and a verifier: a session's drafter
    verifies in process (no link), so it goes with its own verifier, both workers used; a worker
    that has not said which process it is (no instance) is priced as any other pair."""
    workers = Workers(("w1", "w2"), ("w1", "w2"), retry_s=60)
    measured(workers, w1=20.0, w2=20.0)
    round_trips(workers, w1=1.0, w2=1.0)
    for address in ("w1", "w2"):
        workers.load(address).draft_pass_ms = 3.0
    assert workers.round_ms("w1", "w2", 20.0) == workers.round_ms("w1", "w1", 20.0)  # unknown: alike
    workers.load("w1").instance, workers.load("w2").instance = "a", "b"
    assert workers.round_ms("w1", "w2", 20.0) == pytest.approx(workers.round_ms("w1", "w1", 20.0) + 1.0)
    placed = sessions(workers, 8)
    assert all(p.drafter == p.verifier for p in placed)
    assert sorted(p.verifier for p in placed) == ["w1"] * 4 + ["w2"] * 4


def test_recent_min_is_the_least_of_the_last_times():
    from specgrove.round import RecentMin

    times = RecentMin(size=3)
    assert times.ms is None
    for ms in (9.0, 2.0, 5.0, 7.0):
        times.add(ms)
    assert times.ms == 2.0
    times.add(6.0)  # 2.0 left the window
    assert times.ms == 5.0


def test_a_verifier_past_its_kv_budget_sheds_just_enough_sessions():
    from orchestrator.placement import sessions_past_budget

    assert sessions_past_budget(1200, 1000, 4) == 1  # 300 tokens each: one leaving fits it
    assert sessions_past_budget(2000, 1000, 4) == 2
    assert sessions_past_budget(900, 1000, 4) == 0 and sessions_past_budget(5000, 0, 4) == 0
    workers = Workers((), ("v1", "v2"), retry_s=60)
    measured(workers, v1=20.0, v2=20.0)
    workers.load("v1").over_budget = sessions_past_budget(1200, 1000, 4)
    assert [workers.should_move("v1") for _ in range(3)] == [True, False, False]  # one session moves, not all
    assert workers.best_verifier(exclude="v1") == "v2"
