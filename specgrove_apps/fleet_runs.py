"""The fleet simulator against real fleets: ``python -m specgrove_apps.fleet_runs --out FILE``.

For each small fleet (drafters × verifiers: 1×1, 2×1, 1×2, 2×2) it starts the roles on loopback
(``start_stack``: SmolLM2 + the feature draft, one process per worker), runs S concurrent greedy
sessions of the chat workload, and measures the aggregate tokens per second. A calibration run
first (one session on 1×1) measures what the simulator is fed: the verifier's pass cost per
rows × tokens is the committed CPU cost curve; the draft level's cost and the orchestrator's
overhead per round come from that run's metrics, the acceptance per depth from its rounds. Then
``specgrove_apps.simulate`` predicts each fleet, and the error is reported. Workers of one fleet
share this machine's cores, which the simulator does not model: it assumes a device per worker.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FLEETS = ((1, 1), (2, 1), (1, 2), (2, 2))
COST_CURVE = Path(__file__).resolve().parent.parent / "docs" / "bench" / "cpu-cost-runner.json"


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return sum(values)


def run_fleet(drafters: int, verifiers: int, prompts: list[str], tokens: int, cache_dir) -> dict:
    """Aggregate tokens/s of ``len(prompts)`` concurrent sessions on a fleet, and its costs."""
    from services.roles import start_stack
    from specgrove_apps.client import Client

    stack = start_stack(0, "smollm2", "smollm2-feature", cache_dir, verifiers=verifiers, drafters=drafters)
    try:
        client = Client(stack.address)
        client.generate(prompts[0], chat=True, max_new_tokens=8)  # warm-up, not timed
        started = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            outs = list(pool.map(lambda p: client.generate(p, chat=True, max_new_tokens=tokens), prompts))
        wall = time.perf_counter() - started
        draft = f"http://127.0.0.1:{stack.ports['drafter_metrics']}/metrics"
        draft_ms = 1000 * _metric(draft, "specgrove:draft_pass_seconds_sum") / max(
            1.0, _metric(draft, "specgrove:draft_pass_seconds_count"))
        rounds = sum(o.usage["rounds"] for o in outs)
        return {"fleet": f"{drafters}x{verifiers}", "sessions": len(prompts), "tokens": sum(len(o.token_ids) for o in outs),
                "wall_s": round(wall, 3), "tokens_per_s": round(sum(len(o.token_ids) for o in outs) / wall, 2),
                "rounds": rounds, "draft_tokens": sum(o.usage["num_draft_tokens"] for o in outs),
                "accepted_tokens": sum(o.usage["num_accepted_tokens"] for o in outs),
                "draft_pass_ms": round(draft_ms, 2)}
    finally:
        stack.stop()


def acceptance_from(run: dict, k: int) -> tuple[float, ...]:
    """A per-depth acceptance vector with the run's mean accepted tokens per drafting round, for
    chains of ``k`` (a geometric vector a, a, ...: the simplest with that mean)."""
    mean = run["accepted_tokens"] / max(1, run["rounds"])
    lo, hi = 0.0, 0.999
    for _ in range(60):  # mean accepted of a geometric chain: Σ_{j=1..k} a^j
        a = (lo + hi) / 2
        lo, hi = (a, hi) if sum(a ** j for j in range(1, k + 1)) < mean else (lo, a)
    return tuple([round(lo, 4)] * k)


def predict(calibration: dict, fleets: list[dict], tokens: int) -> list[dict]:
    from specgrove_apps.simulate import FleetProfile, SimConfig, read_cost_curve, simulate

    table, _ = read_cost_curve(COST_CURVE)
    k = 4
    one_round_ms = 1000 * calibration["wall_s"] / max(1, calibration["rounds"])
    base = FleetProfile(table, {1: calibration["draft_pass_ms"]}, acceptance_from(calibration, k), chain_length=k)
    predicted_round = simulate(base, SimConfig(1, 1, 1, tokens, expected=True))
    overhead = max(0.0, one_round_ms - predicted_round["makespan_ms"] / max(1, predicted_round["rounds"]))
    profile = FleetProfile(table, {1: calibration["draft_pass_ms"]}, acceptance_from(calibration, k), chain_length=k,
                           overhead_ms=overhead)
    rows = []
    for run in fleets:
        d, v = (int(x) for x in run["fleet"].split("x"))
        sim = simulate(profile, SimConfig(d, v, run["sessions"], tokens, expected=True))
        error = sim["tokens_per_s"] / run["tokens_per_s"] - 1
        rows.append({**run, "predicted_tokens_per_s": round(sim["tokens_per_s"], 2), "error": round(error, 4)})
    return rows


def main(argv=None) -> int:
    from specgrove.config import default_cache_dir
    from specgrove.workloads import load_workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    prompts = [p.text for p in load_workload("chat", args.sessions)]
    calibration = run_fleet(1, 1, prompts[:1], args.tokens, default_cache_dir())
    fleets = [run_fleet(d, v, prompts, args.tokens, default_cache_dir()) for d, v in FLEETS]
    rows = predict(calibration, fleets, args.tokens)
    report = {"calibration": calibration, "fleets": rows, "cost_curve": str(COST_CURVE.name)}
    print(f"{'fleet':6s} {'measured tok/s':>15s} {'predicted':>10s} {'error':>7s}")
    for row in rows:
        print(f"{row['fleet']:6s} {row['tokens_per_s']:15.1f} {row['predicted_tokens_per_s']:10.1f} {row['error']:+7.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
