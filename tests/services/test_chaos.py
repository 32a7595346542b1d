"""Soak and chaos with real processes on loopback (specgrove_apps/chaos.py, the short version;
`python -m specgrove_apps.chaos` runs the long one). Clients generate back to back; first with
no faults (no client may see an error), then while the drafter, the verifier, the orchestrator
and Redis are each killed with SIGKILL and restarted. Clients resume failed streams by session
id; every completion must equal the target's greedy output: no token lost or duplicated."""

from __future__ import annotations

from services.roles import start_stack
from specgrove_apps.chaos import expected_outputs, run_chaos

MAX_NEW = 32


def test_soak_then_every_role_killed_under_load_loses_no_token(long_dir, tmp_path):
    prompts = expected_outputs(str(long_dir), MAX_NEW)
    stack = start_stack(0, str(long_dir), str(long_dir), tmp_path / "cache", log_dir=tmp_path)
    try:
        soak = run_chaos(stack, prompts, clients=3, duration_s=8, max_new=MAX_NEW, faults=[], every_s=1, down_s=0)
        assert soak["generations"] >= 6 and soak["client_errors"] == {} and soak["resumes"] == 0
        assert soak["tokens_lost_or_duplicated"] == 0
        chaos = run_chaos(stack, prompts, clients=3, duration_s=20, max_new=MAX_NEW,
                          faults=["drafter", "verifier", "orchestrator", "redis"], every_s=4, down_s=1)
    finally:
        stack.stop()
    assert [role for _, role in chaos["faults"]] == ["drafter", "verifier", "orchestrator", "redis"]
    assert chaos["generations"] >= 6 and chaos["tokens_checked"] >= 6 * MAX_NEW
    assert chaos["mismatched_completions"] == 0 and chaos["index_errors"] == 0  # nothing lost or duplicated
    assert chaos["resumes"] >= 1  # the orchestrator's death was seen, and survived by resuming
