"""Placement over the orchestrator's workers: round-robin, failed workers skipped for a while."""

import time

from orchestrator.placement import Workers


def test_new_sessions_go_round_robin_over_live_verifiers():
    workers = Workers(("d1", "d2"), ("v1", "v2", "v3"), retry_s=60)
    first = [workers.place() for _ in range(3)]
    assert sorted(p.verifier for p in first) == ["v1", "v2", "v3"]
    workers.mark_down("v2")
    assert all(workers.place().verifier != "v2" for _ in range(6))
    assert {workers.place().drafter for _ in range(4)} == {"d1", "d2"}


def test_a_failed_worker_is_skipped_until_its_retry_time_has_passed():
    workers = Workers((), ("v1", "v2", "v3"), retry_s=0.2)
    assert workers.place().drafter == ""  # no drafter deployed: plain decoding
    workers.mark_down("v2")
    assert workers.next_live(workers.verifiers, "v1") == "v3" and workers.next_live(workers.verifiers, "v3") == "v1"
    for v in ("v1", "v3"):
        workers.mark_down(v)
    assert workers.next_live(workers.verifiers, "v1") == "v2"  # all down: simply the next one
    assert all(workers.place().verifier in ("v1", "v2", "v3") for _ in range(3))  # all down: placed anyway
    time.sleep(0.25)
    assert workers.live("v2") and workers.next_live(workers.verifiers, "v1") == "v2"
