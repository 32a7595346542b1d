"""The fleet simulator against real fleets: ``python -m specgrove_apps.fleet_runs --out FILE``.

For each small fleet (drafters × verifiers: 1×1, 2×1, 1×2, 2×2) it starts the roles on loopback
(``start_stack``: SmolLM2 + the feature draft, one process per worker), runs S concurrent greedy
sessions of the chat workload, and measures the aggregate tokens per second. The simulator is fed
the committed CPU pass-cost curve and, from the 1×1 fleet (the reference), the draft pass, the
chain length the planner chose, the acceptance rate and the overhead per round; it then predicts
the other fleets (``predict``). Workers of one fleet share this machine's cores, which the
simulator does not model (it assumes a device per worker): ``--min-pass-ms`` makes every verifier
pass last that long, as a GPU-bound one does, so that the cores are not what limits the fleet.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FLEETS = ((1, 1), (2, 1), (1, 2), (2, 2))
COST_CURVE = Path(__file__).resolve().parent.parent / "docs" / "bench" / "cpu-cost-runner.json"


def _metric(url: str, name: str) -> float:
    from specgrove.metrics import scrape

    return sum(value for _, value in scrape(url, name, timeout=5))


def run_fleet(drafters: int, verifiers: int, prompts: list[str], tokens: int, cache_dir, min_pass_ms: float = 0.0) -> dict:
    """Aggregate tokens/s of ``len(prompts)`` concurrent sessions on a fleet, and its costs.
    min_pass_ms: every verifier pass lasts at least this long (a GPU-bound verifier, emulated:
    the wait leaves the cores free, so workers sharing them behave as workers on devices of their
    own)."""
    from services.roles import start_stack
    from specgrove_apps.client import Client

    stack = start_stack(0, "smollm2", "smollm2-feature", cache_dir, verifiers=verifiers, drafters=drafters,
                        extra_verifier=("--min-pass-ms", str(min_pass_ms)))
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
    """A per-depth acceptance vector for chains of up to ``k``: each draft token accepted with the
    run's rate (accepted / drafted tokens), the simplest vector with that rate."""
    rate = run["accepted_tokens"] / max(1, run["draft_tokens"])
    return tuple([round(rate, 4)] * max(1, k))


def predict(reference: dict, fleets: list[dict], tokens: int, min_pass_ms: float = 0.0) -> list[dict]:
    """Each fleet's tokens/s as the simulator predicts it, fed by the measured pass costs (the
    committed CPU curve, floored at ``min_pass_ms``), the reference run's draft pass, chain length
    and acceptance, and its time beyond the simulated passes as the orchestrator's overhead per
    round. The reference is the 1×1 fleet (its error is 0 by construction); the others are
    predictions."""
    from specgrove_apps.simulate import FleetProfile, SimConfig, read_cost_curve, simulate

    table, _ = read_cost_curve(COST_CURVE)
    table = {rows: {n: max(ms, min_pass_ms) for n, ms in curve.items()} for rows, curve in table.items()}
    k = round(reference["draft_tokens"] / max(1, reference["rounds"]))  # the planner's choice under this load
    fields = dict(verify_table=table, draft_table={1: reference["draft_pass_ms"]},
                  acceptance=acceptance_from(reference, k), chain_length=k)
    sessions = reference["sessions"]
    bare = simulate(FleetProfile(**fields), SimConfig(1, 1, sessions, tokens, expected=True))
    rounds_each = reference["rounds"] / sessions
    overhead = max(0.0, 1000 * reference["wall_s"] - bare["makespan_ms"]) / max(1.0, rounds_each)
    profile = FleetProfile(**fields, overhead_ms=overhead)
    rows = []
    for run in fleets:
        d, v = (int(x) for x in run["fleet"].split("x"))
        sim = simulate(profile, SimConfig(d, v, run["sessions"], tokens, expected=True))
        error = sim["tokens_per_s"] / run["tokens_per_s"] - 1
        rows.append({**run, "predicted_tokens_per_s": round(sim["tokens_per_s"], 2), "error": round(error, 4),
                     "reference": run is reference})
    return rows


def main(argv=None) -> int:
    from specgrove.config import default_cache_dir
    from specgrove.workloads import load_workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--min-pass-ms", type=float, default=0.0,
                        help="every verifier pass lasts at least this long (GPU-bound verifiers, emulated)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--from", dest="source", default=None,
                        help="predict again from the measurements of an earlier --out (no runs)")
    args = parser.parse_args(argv)
    if args.source:
        earlier = json.loads(Path(args.source).read_text())
        fleets = earlier["fleets"]
        args.min_pass_ms, args.tokens = earlier.get("min_pass_ms", 0.0), earlier.get("tokens", args.tokens)
    else:
        prompts = [p.text for p in load_workload("chat", args.sessions)]
        fleets = [run_fleet(d, v, prompts, args.tokens, default_cache_dir(), args.min_pass_ms) for d, v in FLEETS]
    rows = predict(fleets[0], fleets, args.tokens, args.min_pass_ms)
    report = {"fleets": rows, "cost_curve": str(COST_CURVE.name),
              "min_pass_ms": args.min_pass_ms, "sessions": args.sessions, "tokens": args.tokens}
    print(f"{'fleet':6s} {'measured tok/s':>15s} {'predicted':>10s} {'error':>7s}")
    for row in rows:
        print(f"{row['fleet']:6s} {row['tokens_per_s']:15.1f} {row['predicted_tokens_per_s']:10.1f} {row['error']:+7.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
