"""The fleet simulator against real fleets: ``python -m specgrove_apps.fleet_runs --out FILE``.

For each small fleet (drafters × verifiers: 1×1, 2×1, 1×2, 2×2) it starts the roles on loopback
(``start_stack``: SmolLM2 + the feature draft, one process per worker), runs S concurrent greedy
sessions of the chat workload, and measures the aggregate tokens per second.

The simulator is fed what was measured on this machine in the same run:
- the verify pass's rows × tokens cost curve, in a process with the workers' thread count
  (``host_probe.cost_curve``);
- how passes computing at once slow each other, every worker sharing this machine
  (``host_probe.host_slowdown``: the simulator's shared-host model);
- from the 1×1 fleet (the reference): the draft pass; the verify pass as served (the runner's
  curve scaled by the verifier's own measured passes: its work around the model); the chain
  lengths its rounds had (plain and drafted, as AdaEDL spread them) and their acceptance; and its
  time beyond the simulated passes as the orchestrator's overhead per round.
It then predicts the other fleets. ``--threads`` (default 1) limits each worker's compute threads,
as a pod's CPU limit does: with torch's default (every core in every process), passes computing at
once on a small CPU slow each other several times over. ``--chain K`` asks every request for chains
of K (AdaEDL still ends some early: the measured mix of lengths feeds the simulator; default: the
served default, whose goodput planner adapts K round by round, which the simulator leaves out).
``--min-pass-ms`` makes every verifier pass last at least that long, as a GPU-bound one does.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FLEETS = ((1, 1), (2, 1), (1, 2), (2, 2))
CURVE_ROWS, CURVE_TOKENS = (1, 2, 4, 8), (1, 2, 3, 4, 5, 8, 32, 64)  # 32, 64: prompts' prefills


def _metric(url: str, name: str) -> float:
    from specgrove.metrics import scrape

    return sum(value for _, value in scrape(url, name, timeout=5))


def _pass_sums(stack, role: str) -> dict[str, float]:
    """Over every worker of ``role`` (``drafter``, ``verifier``): the sums and counts of its pass
    time (seconds) and tokens per pass. (A drafter records a round's draft passes as one: its
    levels' time and its tree's tokens.)"""
    urls = [f"http://127.0.0.1:{port}/metrics" for name, port in stack.ports.items()
            if name.startswith(role) and name.endswith("_metrics")]
    kind = {"drafter": "draft", "verifier": "verify"}[role]
    return {f"{name}_{part}": sum(_metric(url, f"specgrove:{kind}_{name}_{part}") for url in urls)
            for name in ("pass_seconds", "tokens_per_pass") for part in ("sum", "count")}


def run_fleet(drafters: int, verifiers: int, prompts: list[str], tokens: int, cache_dir, min_pass_ms: float = 0.0,
              threads: int | None = 1, chain: int | None = None) -> dict:
    """Aggregate tokens/s of ``len(prompts)`` concurrent sessions on a fleet, and its costs.
    min_pass_ms: every verifier pass lasts at least this long (a GPU-bound verifier, emulated:
    the wait leaves the cores free); threads: each role's compute threads (None: torch's default);
    chain: every request's chain length (None: the served default's planner)."""
    from services.roles import start_stack
    from specgrove_apps.client import Client
    from specgrove_apps.host_probe import thread_env

    stack = start_stack(0, "smollm2", "smollm2-feature", cache_dir, verifiers=verifiers, drafters=drafters,
                        extra_verifier=("--min-pass-ms", str(min_pass_ms)), env=thread_env(threads), http_port=0)
    drafts = f"http://127.0.0.1:{stack.ports['http']}/metrics"  # the orchestrator's
    ask = {"mode": "chain", "draft_len": chain} if chain is not None else {}
    try:
        client = Client(stack.address)
        client.generate(prompts[0], chat=True, max_new_tokens=8, **ask)  # warm-up, not timed
        drafted_before = _metric(drafts, "specgrove:spec_decode_num_drafts_total")
        before = {role: _pass_sums(stack, role) for role in ("drafter", "verifier")}
        started = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            outs = list(pool.map(lambda p: client.generate(p, chat=True, max_new_tokens=tokens, **ask), prompts))
        wall = time.perf_counter() - started
        draft, verify = ({k: v - before[role][k] for k, v in _pass_sums(stack, role).items()}
                         for role in ("drafter", "verifier"))
        emitted = sum(len(o.token_ids) for o in outs)
        return {"fleet": f"{drafters}x{verifiers}", "sessions": len(prompts), "tokens": emitted,
                "prompt_tokens": round(sum(o.usage["prompt_tokens"] for o in outs) / len(outs), 1),
                "wall_s": round(wall, 3), "tokens_per_s": round(emitted / wall, 2),
                "rounds": sum(o.usage["rounds"] for o in outs),
                "drafted_rounds": int(_metric(drafts, "specgrove:spec_decode_num_drafts_total") - drafted_before),
                "draft_tokens": sum(o.usage["num_draft_tokens"] for o in outs),
                "accepted_tokens": sum(o.usage["num_accepted_tokens"] for o in outs),
                # a draft level (a chain's token), and a verify pass as served (the model and its rows' work)
                "draft_pass_ms": round(1000 * draft["pass_seconds_sum"] / max(1.0, draft["tokens_per_pass_sum"]), 2),
                "verify_pass_ms": round(1000 * verify["pass_seconds_sum"] / max(1.0, verify["pass_seconds_count"]), 2),
                "verify_passes": int(verify["pass_seconds_count"])}
    finally:
        stack.stop()


def chain_mix(run: dict) -> tuple[tuple[int, float], ...]:
    """Each round's chain length as the run spread it (a draft-length policy such as AdaEDL's):
    plain rounds, and drafted ones at the two lengths around their mean, in the shares that give
    its drafted rounds and its draft tokens."""
    drafted = run.get("drafted_rounds") or 0
    if not drafted or not run["draft_tokens"]:
        return ((0, 1.0),)
    mean = run["draft_tokens"] / drafted
    low = int(mean)
    high_share = mean - low
    share = min(1.0, drafted / max(1, run["rounds"]))
    mix = [(0, 1.0 - share), (low, share * (1 - high_share)), (low + 1, share * high_share)]
    return tuple((k, round(p, 6)) for k, p in mix if p > 0)


def acceptance_from(run: dict, mix: tuple[tuple[int, float], ...]) -> tuple[float, ...]:
    """The per-depth acceptance a (the same at every depth) under which the drafted rounds of
    ``mix`` accept, on average, what the run's did: E over drafted K of a + a² + … + a^K =
    accepted tokens / drafted rounds. Solved by bisection."""
    drafted = [(k, p) for k, p in mix if k > 0]
    top = max((k for k, _ in drafted), default=0)
    if not drafted or not run["accepted_tokens"]:
        return (0.0,) * max(1, top)
    per_round = run["accepted_tokens"] / max(1, run.get("drafted_rounds") or run["draft_tokens"])
    weight = sum(p for _, p in drafted)

    def accepted(a: float) -> float:
        return sum(p * sum(a ** i for i in range(1, k + 1)) for k, p in drafted) / weight

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if accepted(mid) < per_round else (lo, mid)
    return tuple([round(lo, 4)] * top)


def served_curve(curve: dict[int, dict[int, float]], reference: dict, config, fields: dict) -> dict:
    """The runner's pass curve scaled to a served pass (the verifier's own work around the model:
    admitting the rows, sampling and accepting each): by the reference's measured mean pass over
    the mean pass of the reference simulated on the bare curve (``config``, ``fields``: how)."""
    from specgrove_apps.simulate import FleetProfile, simulate

    if not reference.get("verify_pass_ms"):
        return curve
    bare = simulate(FleetProfile(verify_table=curve, **fields), config)
    mean = bare["utilisation"]["verifier_mean"] * bare["makespan_ms"] / max(1, bare["verify_passes"])
    factor = reference["verify_pass_ms"] / mean
    return {rows: {tokens: ms * factor for tokens, ms in c.items()} for rows, c in curve.items()}


def predict(reference: dict, fleets: list[dict], tokens: int, curve: dict[int, dict[int, float]],
            host_slowdown: tuple[float, ...] = (), min_pass_ms: float = 0.0) -> list[dict]:
    """Each fleet's tokens/s as the simulator predicts it, fed by the measured pass costs
    (``curve``; every pass lasting at least ``min_pass_ms``), the host's measured slowdown of
    passes computing at once (``()``: a device per worker), and the reference run's draft pass,
    served verify pass, chain lengths (``chain_mix``), acceptance, and its time beyond the
    simulated passes as the orchestrator's overhead per round; its prompts' mean length for each
    session's prefill. The reference is the 1×1 fleet (its error is ~0 by construction); the
    others are predictions."""
    from specgrove_apps.simulate import FleetProfile, SimConfig, simulate

    mix = chain_mix(reference)
    fields = dict(draft_table={1: reference["draft_pass_ms"]}, acceptance=acceptance_from(reference, mix),
                  chain_mix=mix, min_verify_ms=min_pass_ms)
    sessions, prompt = reference["sessions"], round(reference.get("prompt_tokens", 0))

    def config(d: int, v: int):
        return SimConfig(d, v, sessions, tokens, prompt_tokens=prompt, expected=True, host_slowdown=host_slowdown)

    fields["verify_table"] = served_curve(curve, reference, config(1, 1), fields)
    bare = simulate(FleetProfile(**fields), config(1, 1))
    overhead = max(0.0, 1000 * reference["wall_s"] - bare["makespan_ms"]) / max(1.0, reference["rounds"] / sessions)
    profile = FleetProfile(**fields, overhead_ms=overhead)
    rows = []
    for run in fleets:
        d, v = (int(x) for x in run["fleet"].split("x"))
        sim = simulate(profile, config(d, v))
        error = sim["tokens_per_s"] / run["tokens_per_s"] - 1
        rows.append({**run, "predicted_tokens_per_s": round(sim["tokens_per_s"], 2), "error": round(error, 4),
                     "reference": run is reference})
    return rows


def measure(args) -> dict:
    """The four fleets, the cost curve and the host's slowdown, measured in this order."""
    from specgrove.config import default_cache_dir
    from specgrove.workloads import load_workload
    from specgrove_apps.host_probe import cost_curve, host_slowdown

    threads = args.threads or None
    prompts = [p.text for p in load_workload("chat", args.sessions)]
    fleets = []
    for d, v in FLEETS:
        fleets.append(run_fleet(d, v, prompts, args.tokens, default_cache_dir(), args.min_pass_ms, threads, args.chain))
        print(f"{fleets[-1]['fleet']}: {fleets[-1]['tokens_per_s']} tok/s", flush=True)
    curve = cost_curve(CURVE_ROWS, CURVE_TOKENS, threads, repeats=7)
    host = host_slowdown(max(d + v for d, v in FLEETS), rows=4, seconds=4.0, load_s=20.0, threads=threads)
    print(f"host slowdown of 1..4 passes at once: {host['slowdown']}", flush=True)
    return {"fleets": fleets, "curve": {str(r): {str(t): ms for t, ms in c.items()} for r, c in curve.items()},
            "host": host, "min_pass_ms": args.min_pass_ms, "sessions": args.sessions, "tokens": args.tokens,
            "threads": args.threads, "chain": args.chain}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--min-pass-ms", type=float, default=0.0,
                        help="every verifier pass lasts at least this long (GPU-bound verifiers, emulated)")
    parser.add_argument("--threads", type=int, default=1, help="each worker's compute threads (0: torch's default)")
    parser.add_argument("--chain", type=int, default=None,
                        help="chains of K, AdaEDL ending some early (default: the served planner's)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--from", dest="source", default=None,
                        help="predict again from the measurements of an earlier --out (no runs)")
    args = parser.parse_args(argv)
    measured = json.loads(Path(args.source).read_text()) if args.source else measure(args)
    curve = {int(r): {int(t): ms for t, ms in c.items()} for r, c in measured["curve"].items()}
    host = tuple(measured["host"]["slowdown"])
    rows = predict(measured["fleets"][0], measured["fleets"], measured["tokens"], curve, host, measured["min_pass_ms"])
    device_each = predict(measured["fleets"][0], measured["fleets"], measured["tokens"], curve, (),
                          measured["min_pass_ms"])
    for row, alone in zip(rows, device_each):  # what the model without the shared host predicts
        row["predicted_device_per_worker"], row["error_device_per_worker"] = (alone["predicted_tokens_per_s"],
                                                                              alone["error"])
    report = {**measured, "fleets": rows}
    print(f"{'fleet':6s} {'measured tok/s':>15s} {'predicted':>10s} {'error':>7s} {'(a device each)':>16s}")
    for row in rows:
        print(f"{row['fleet']:6s} {row['tokens_per_s']:15.1f} {row['predicted_tokens_per_s']:10.1f} "
              f"{row['error']:+7.1%} {row['error_device_per_worker']:+16.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
