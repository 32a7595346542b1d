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
