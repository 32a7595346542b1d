"""Repeated fault scenarios (specgrove_apps.chaos.scenario) on one deployment, with a verdict each.

``python -m specgrove_apps.fault_runs --runs 10 --json docs/bench/faults-smollm2.json`` runs every
fault (Redis, drafter, verifier, orchestrator) ``--runs`` times in a row, each time with one session
of every kind mid-generation, and reports per fault how many runs passed: every completion equal to
the target's greedy output, nothing lost or duplicated, and (all but the orchestrator's death) no
error seen by any client.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from specgrove_apps import print_report
from specgrove_apps.chaos import KINDS, deployment, scenario, start

FAULTS = ("redis", "drafter", "verifier", "orchestrator")
PROMPTS = ("def fibonacci(n):", "The capital of France is", "Once upon a time", "import numpy as np\n")


def verdict(fault: str, report: dict) -> list[str]:
    """What went wrong in one scenario (empty: it passed)."""
    problems = []
    if report["generations_by_kind"] != {kind: 1 for kind in KINDS}:
        problems.append(f"completions {report['generations_by_kind']}")
    if report["tokens_lost_or_duplicated"] or report["mismatched_completions"]:
        problems.append(f"{report['mismatched_completions']} completions differ from greedy, "
                        f"{report['index_errors']} index errors")
    if fault != "orchestrator" and report["client_errors"]:
        problems.append(f"client errors {report['client_errors']}")
    return problems


def main(argv=None) -> None:
    from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET, default_cache_dir

    parser = argparse.ArgumentParser(prog="python -m specgrove_apps.fault_runs", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--down", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cache = default_cache_dir()
    work = Path(tempfile.mkdtemp(prefix="specgrove-faults-"))
    stack = start(args.target, args.draft, cache, work)
    runs = {fault: [] for fault in FAULTS}
    t0 = time.monotonic()
    try:
        dep = deployment(stack, args.target, cache, args.max_new_tokens, PROMPTS)
        for _ in range(args.runs):
            for fault in FAULTS:
                report = scenario(stack, dep, fault, args.max_new_tokens, down_s=args.down)
                runs[fault].append({"problems": verdict(fault, report), **report})
                print(fault, verdict(fault, report) or "ok", flush=True)
    finally:
        stack.stop()
    print_report({"target": args.target, "draft": args.draft, "max_new_tokens": args.max_new_tokens,
                  "down_s": args.down, "sessions_per_run": len(KINDS), "kinds": list(KINDS),
                  "passed": {fault: sum(not r["problems"] for r in rs) for fault, rs in runs.items()},
                  "runs": args.runs, "minutes": round((time.monotonic() - t0) / 60, 1), "logs": str(work),
                  "details": runs}, args.json)


if __name__ == "__main__":
    main()
