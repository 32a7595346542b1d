"""``specgrove simulate``: predict a fleet's goodput, TTFT and TPOT from measured costs
(specgrove_apps.simulate), and with ``--sweep`` the drafter:verifier ratio for each k8s overlay.

    specgrove simulate --drafters 2 --verifiers 2 --sessions 8 --tokens 128 \\
        --cost-curve docs/bench/cpu-cost-runner.json --acceptance smollm2-feature --json out.json

The JSON holds ``config`` (the flags), ``profile`` (the FleetProfile used: verify_table
{rows: {tokens: ms}}, draft_table {rows: ms}, acceptance, chain_length, link_ms, overhead_ms,
max_batch, meta), ``result`` (the run: tokens_per_s, makespan_ms, ttft_ms and tpot_ms as
{mean, p50, p99}, verifier_share, utilisation {drafters, verifiers, drafter_mean,
verifier_mean}, chain_length, rounds, verify_passes, rows_per_pass, tokens_per_round, ...),
``small_fleets`` (1×1, 2×1, 1×2, 2×2 at 8 sessions, each a result) and, with ``--sweep``,
``overlays`` (per overlay: its GPUs, their costs and, per budget, the best ratio)."""

from __future__ import annotations

import json

from specgrove.errors import InvalidArgument
from specgrove_apps.cli.serving import positive_int

DEFAULT_DRAFT_MS = "5.0"  # the feature draft's step on the 2-core CPU (docs/bench/eval-smollm2-feature.json: 4.9–5.9)
DEFAULT_ACCEPTANCE = "smollm2-feature"


def _numbers(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _acceptance(text: str) -> tuple[float, ...]:
    """'0.7,0.5,0.3', or a shipped draft's name (its per-depth top-1 agreement)."""
    from specgrove_apps.simulate import shipped_acceptance

    try:
        values = _numbers(text)
    except ValueError:
        values = shipped_acceptance(text)
        if values is None:
            raise InvalidArgument("--acceptance", f"neither numbers nor a shipped draft with a training record: {text}")
    if not values or not all(0.0 <= a <= 1.0 for a in values):
        raise InvalidArgument("--acceptance", f"probabilities in [0, 1] expected, got {text}")
    return values


def _draft_table(text: str) -> dict[int, float]:
    """'5' (every pass) or 'rows:ms,...' ('1:5,16:9')."""
    if ":" not in text:
        return {1: float(text)}
    return {int(r): float(ms) for r, ms in (pair.split(":") for pair in text.split(",") if pair.strip())}


def build_profile(args):
    """The FleetProfile the flags describe: a calibration profile and/or a cost curve, then the
    flags named explicitly on top."""
    from specgrove_apps.simulate import FleetProfile, read_calibration, read_cost_curve

    fields: dict = read_calibration(args.profile) if args.profile else {}
    if args.cost_curve:
        table, meta = read_cost_curve(args.cost_curve, args.shape)
        fields["verify_table"] = table
        fields["meta"] = {**fields.get("meta", {}), **meta}
    if "verify_table" not in fields:
        raise InvalidArgument("--cost-curve", "simulate needs --cost-curve or --profile (the verify pass costs)")
    if args.draft_ms is not None or "draft_table" not in fields:
        fields["draft_table"] = _draft_table(args.draft_ms or DEFAULT_DRAFT_MS)
    if args.acceptance is not None or "acceptance" not in fields:
        fields["acceptance"] = _acceptance(args.acceptance or DEFAULT_ACCEPTANCE)
    if args.link_ms is not None:
        fields["link_ms"] = args.link_ms
    return FleetProfile(**fields, chain_length=args.chain, max_chain=args.max_chain, overhead_ms=args.overhead_ms,
                        max_batch=args.max_batch, min_verify_ms=args.min_verify_ms)


def _placement(name: str, profile):
    from specgrove_apps.simulate import least_loaded, predicted_pass, round_robin

    return {"round-robin": round_robin, "least-loaded": least_loaded, "predicted-pass": predicted_pass(profile)}[name]


def format_result(name: str, r: dict) -> str:
    u = r["utilisation"]
    return (f"{name:>8}  K={r['chain_length']}  {r['tokens_per_s']:9.1f} tok/s  "
            f"TTFT p50 {r['ttft_ms']['p50']:8.1f} p99 {r['ttft_ms']['p99']:8.1f} ms  "
            f"TPOT p50 {r['tpot_ms']['p50']:7.2f} p99 {r['tpot_ms']['p99']:7.2f} ms  "
            f"rows/pass {r['rows_per_pass']:5.2f}  util D {u['drafter_mean']:.2f} V {u['verifier_mean']:.2f}  "
            f"share {r['verifier_share']}")


def format_overlays(overlays: dict) -> str:
    lines = ["overlay      drafter GPU ($) / verifier GPU ($)              budget  sessions  D:V    tok/s"
             "  tok/s per cost  TPOT p50 ms"]
    for name, o in overlays.items():
        gpus = f"{o['drafter_gpu']} ({o['drafter_cost']}) / {o['verifier_gpu']} ({o['verifier_cost']})"
        for b in o["budgets"]:
            best = b["best"]
            lines.append(f"{name:<12} {gpus:<46} {b['budget']:6.1f}  {b['sessions']:8d}  {b['ratio']:<5} "
                         f"{best['tokens_per_s']:8.1f}  {best['tokens_per_s'] / b['budget']:14.2f}  "
                         f"{best['tpot_p50_ms']:11.2f}")
    return "\n".join(lines)


def cmd_simulate(args) -> int:
    from dataclasses import asdict

    from specgrove_apps.simulate import (SimConfig, overlay_gpus, predict_small_fleets, profile_dict,
                                         recommend_overlays, simulate)

    profile = build_profile(args)
    config = SimConfig(drafters=args.drafters, verifiers=args.verifiers, sessions=args.sessions, tokens=args.tokens,
                       total_sessions=args.total_sessions, prompt_tokens=args.prompt_tokens, seed=args.seed,
                       expected=args.expected, verifier_slowdown=_numbers(args.verifier_slowdown),
                       host_slowdown=_numbers(args.host_slowdown))
    result = simulate(profile, config, _placement(args.placement, profile))
    report = {"config": asdict(config) | {"placement": args.placement}, "profile": profile_dict(profile),
              "result": result, "small_fleets": predict_small_fleets(profile, tokens=args.tokens, seed=args.seed,
                                                     host_slowdown=config.host_slowdown)}
    print(format_result(f"{args.drafters}x{args.verifiers}", result))
    print("small fleets at 8 sessions (drafters x verifiers):")
    for name, r in report["small_fleets"].items():
        print(format_result(name, r))
    if args.sweep:
        report["overlays"] = recommend_overlays(profile, overlay_gpus(), tokens=min(args.tokens, 64))
        print(format_overlays(report["overlays"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
        print(f"wrote {args.json}")
    return 0


def add_parser(sub) -> None:
    sim = sub.add_parser("simulate", help="predict a fleet's goodput, TTFT and TPOT from measured costs")
    sim.add_argument("--drafters", type=int, default=1, help="drafter workers (0: plain decoding)")
    sim.add_argument("--verifiers", type=positive_int, default=1)
    sim.add_argument("--sessions", type=positive_int, default=8, help="concurrent sessions")
    sim.add_argument("--tokens", type=positive_int, default=128, help="tokens each session generates")
    sim.add_argument("--total-sessions", type=positive_int, default=None,
                     help="a closed loop: a new session starts as one finishes until this many have (default: "
                          "the --sessions all start at t = 0, none after)")
    sim.add_argument("--prompt-tokens", type=int, default=0, help="a prefill pass of this many tokens (0: none)")
    sim.add_argument("--profile", help="a `specgrove calibrate` profile (verify curve, draft level, acceptance)")
    sim.add_argument("--cost-curve", help="a rows x tokens cost table, e.g. docs/bench/cpu-cost-runner.json")
    sim.add_argument("--shape", default=None, help="which model shape of the cost table (default: the first)")
    sim.add_argument("--acceptance", default=None,
                     help=f"per-depth acceptance '0.7,0.5,0.3', or a shipped draft (default {DEFAULT_ACCEPTANCE})")
    sim.add_argument("--draft-ms", default=None,
                     help=f"draft level ms on the cost curve's machine (--sweep scales it by bandwidth): '5' or "
                          f"'rows:ms,...' (default {DEFAULT_DRAFT_MS})")
    sim.add_argument("--chain", type=int, default=None, help="chain length K (default: picked by goodput)")
    sim.add_argument("--max-chain", type=positive_int, default=8)
    sim.add_argument("--link-ms", type=float, default=None, help="one-way delay of every hop (ms)")
    sim.add_argument("--overhead-ms", type=float, default=0.0, help="the orchestrator's time per round (ms)")
    sim.add_argument("--max-batch", type=positive_int, default=16, help="rounds in one verify pass")
    sim.add_argument("--placement", choices=["round-robin", "least-loaded", "predicted-pass"], default="round-robin")
    sim.add_argument("--verifier-slowdown", default="", help="per verifier: pass cost factors, e.g. '1,2'")
    sim.add_argument("--host-slowdown", default="",
                     help="every worker on one machine: k passes at once each take the k-th factor times as long, "
                          "e.g. '1,1.2,1.6,2.7' (python -m specgrove_apps.host_probe measures it; default: a device each)")
    sim.add_argument("--min-verify-ms", type=float, default=0.0,
                     help="every verify pass lasts at least this long (the rest computes nothing)")
    sim.add_argument("--expected", action="store_true", help="expected tokens per round instead of sampled")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--sweep", action="store_true", help="recommend the drafter:verifier ratio per k8s overlay")
    sim.add_argument("--json", help="write the report here")
    sim.set_defaults(func=cmd_simulate)
