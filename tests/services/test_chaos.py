"""Faults under load with real processes on loopback (specgrove_apps/chaos.py): two verifiers, two
drafters, two orchestrators (the second guessing ahead) and a real Redis; sessions of every kind
(gRPC chains, gRPC trees, guessed draft-ahead, HTTP streaming). gRPC clients resume failed
streams by session id on the other orchestrator, HTTP clients send again whole; every completion
must equal the target's greedy output: no token lost or duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

from specgrove.config import default_cache_dir
from specgrove_apps.chaos import KINDS, deployment, scenario, soak, start
from specgrove_apps.fault_runs import FAULTS, verdict
from specgrove_apps.fault_runs import PROMPTS as REAL_PROMPTS

MAX_NEW = 32


def test_tiny_soak_then_every_role_killed_under_load_loses_no_token(long_dir, tmp_path):
    stack = start(str(long_dir), str(long_dir), tmp_path / "cache", tmp_path)
    try:
        dep = deployment(stack, str(long_dir), Path("/nonexistent"), MAX_NEW)
        quiet = soak(stack, dep, duration_s=6, max_new=MAX_NEW, faults=[], every_s=1, down_s=0, warmup_s=1)
        assert all(quiet["generations_by_kind"][kind] >= 2 for kind in KINDS)
        assert quiet["client_errors"] == {} and quiet["resumes"] == 0 and quiet["restarts"] == 0
        assert quiet["tokens_lost_or_duplicated"] == 0
        chaos = soak(stack, dep, duration_s=10, max_new=MAX_NEW, faults=["drafter", "verifier", "orchestrator", "redis"],
                     every_s=2, down_s=1, warmup_s=1)
    finally:
        stack.stop()
    assert [role for _, role in chaos["faults"]] == ["drafter", "verifier", "orchestrator", "redis"]
    assert all(chaos["generations_by_kind"][kind] >= 2 for kind in KINDS)
    assert chaos["mismatched_completions"] == 0 and chaos["index_errors"] == 0  # nothing lost or duplicated
    assert chaos["resumes"] >= 1  # the orchestrator's death was seen, and survived by resuming
    assert set(chaos["memory_mb_end"]) >= {"verifier", "verifier2", "drafter", "drafter2", "orchestrator",
                                          "orchestrator2", "redis_used_memory"}


@pytest.mark.slow
def test_each_fault_strikes_every_session_kind_of_the_real_model_mid_generation(tmp_path):
    """SmolLM2 with its feature draft; one session of each kind at once, and once each has streamed
    8 tokens: Redis SIGKILLed and restarted 2 s later (no client sees anything), a drafter killed
    (plain decoding meanwhile), a verifier killed with a spare up (the other re-prefills), and each
    orchestrator in turn (every gRPC stream resumes on the other; HTTP sends again whole).
    Every completion equals the target's own greedy output."""
    cache = default_cache_dir()
    stack = start("smollm2", "smollm2-feature", cache, tmp_path)
    try:
        dep = deployment(stack, "smollm2", cache, MAX_NEW, prompts=REAL_PROMPTS)
        reports = {fault: scenario(stack, dep, fault, MAX_NEW) for fault in FAULTS}
    finally:
        stack.stop()
    for fault, report in reports.items():
        # each kind completed once, equal to greedy, nothing lost; no client error unless orchestrators died
        assert verdict(fault, report) == [], (fault, report)
        assert min(report["faults"][0][1].values()) >= 8, (fault, report)  # it struck mid-generation
    for fault in ("redis", "drafter", "verifier"):
        assert reports[fault]["resumes"] == 0, (fault, reports[fault])
    killed = reports["orchestrator"]
    at_strike = killed["faults"][0][1]  # tokens each stream held when both orchestrators died
    mid_stream = [kind for kind in ("chain", "tree", "guess") if at_strike[kind] <= MAX_NEW - 8]
    assert len(mid_stream) >= 2 and killed["resumes"] >= len(mid_stream), killed  # (a tree can finish first)
    assert {f"{kind}: UNAVAILABLE" for kind in mid_stream} <= set(killed["client_errors"]), killed
