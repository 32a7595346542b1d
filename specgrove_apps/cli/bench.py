"""``specgrove bench``: every decoding mode side by side on one workload (specgrove_apps.bench)."""

from __future__ import annotations

import json

from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET, GUESS_COUNT
from specgrove.sampling import SamplingParams
from specgrove_apps.cli.serving import positive_int


def cmd_bench(args) -> int:
    from specgrove_apps.bench import BenchConfig, format_concurrency, format_table, plot, run_bench

    if args.quick:  # a smoke run: under 2 minutes on 2 cores
        args.num_prompts, args.max_new_tokens, args.draft_lens, args.grpc_chain_lens = 2, 24, "4", "4"
    config = BenchConfig(
        workload=args.workload,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        target=args.target,
        draft=args.draft,
        draft_lens=tuple(int(k) for k in args.draft_lens.split(",") if k),
        hf_lookup_lens=tuple(int(k) for k in args.hf_lookup_lens.split(",") if k),
        tree_budgets=tuple(int(m) for m in args.tree_budgets.split(",") if m),
        tree_auto=args.tree_auto,
        chain_auto=args.chain_auto,
        grpc_chain_auto=args.grpc_chain_auto,
        stop_policies=tuple(p for p in args.stop_policies.split(",") if p),
        modes=tuple(m for m in args.modes.split(",") if m),
        structured=args.structured,
        grpc_chain_lens=tuple(int(k) for k in args.grpc_chain_lens.split(",") if k),
        grpc_tree=args.grpc_tree,
        grpc_tree_budgets=tuple(int(m) for m in args.grpc_tree_budgets.split(",") if m),
        grpc_serial=args.grpc_serial, grpc_guess=args.grpc_guess, grpc_split=args.grpc_split,
        link_delays=tuple(float(d) for d in args.link_delays.split(",") if d) or (0.0,),
        min_pass_ms=args.min_pass_ms, drafter_nice=args.drafter_nice, drafter_idle=args.drafter_idle,
        split_cores=args.split_cores, guess_width=args.guess_width, guess_count=args.guess_count,
        concurrency=tuple(int(c) for c in args.concurrency.split(",") if c),
        llama_cpp=args.llama_cpp,
    )
    SamplingParams(temperature=config.temperature, max_new_tokens=config.max_new_tokens).validate()
    config.mode_names()  # rejects unknown modes before loading models
    report = run_bench(config, args.cache_dir, progress=not args.no_progress)
    print(format_table(report))
    if config.concurrency:
        print(format_concurrency(report))
    if "warning" in report["config"]:
        print(f"warning: {report['config']['warning']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0



def _add_workload_flags(bench) -> None:
    """The workload and the models: which prompts, how many tokens, sampled how."""
    bench.add_argument("--workload", choices=["humaneval", "chat", "json"], default="humaneval")
    bench.add_argument("--structured", action="store_true",
                       help="json workload: constrain answers by their schema (SpecGrove modes; ratios vs specgrove-ar)")
    bench.add_argument("--num-prompts", type=int, default=8)
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--temperature", type=float, default=0.0)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--target", default=DEFAULT_TARGET)
    bench.add_argument("--draft", default=DEFAULT_DRAFT)


def _add_in_process_mode_flags(bench) -> None:
    """The in-process modes to run: chain lengths, prompt lookup, trees, stop policies."""
    bench.add_argument("--draft-lens", default="2,4,6", help="comma-separated K values for chain modes")
    bench.add_argument("--hf-lookup-lens", default="",
                       help="comma-separated K: hf-lookup-kK modes (transformers' prompt lookup with K tokens)")
    bench.add_argument("--tree-budgets", default="", help="comma-separated tree sizes (needs a model draft)")
    bench.add_argument("--tree-auto", action="store_true", help="add a tree mode sized by the planner")
    bench.add_argument("--chain-auto", action="store_true",
                       help="add chain-auto: each round's K in 0..max(--draft-lens) picked by the goodput planner")
    bench.add_argument("--stop-policies", default="",
                       help="comma-separated chain-<policy> modes: adaedl,max-confidence,heuristic,static (K <= 8)")


def _add_grpc_mode_flags(bench) -> None:
    """The modes served over gRPC, and how their deployment runs (links, passes, CPU)."""
    bench.add_argument("--grpc-chain-lens", default="", help="comma-separated K: grpc-chain-kK modes over gRPC")
    bench.add_argument("--grpc-tree", action="store_true", help="a grpc-tree mode (network-aware planner)")
    bench.add_argument("--grpc-chain-auto", action="store_true",
                       help="a grpc-chain-auto mode: the served default chain (no K named; goodput picks K)")
    bench.add_argument("--grpc-tree-budgets", default="", help="comma-separated pinned sizes: grpc-tree-mM modes")
    bench.add_argument("--grpc-split", action="store_true",
                       help="every gRPC mode also with the drafter and the verifier in processes of their own (the "
                            "default deployment runs both in one worker process; mode names end in -split)")
    bench.add_argument("--grpc-serial", action="store_true",
                       help="every gRPC mode also on separate drafter and verifier processes without draft-ahead "
                            "(mode names end in -serial)")
    bench.add_argument("--grpc-guess", action="store_true",
                       help="every gRPC mode also on separate drafter and verifier processes with guessed "
                            "draft-ahead (--guess-ahead; mode names end in -guess)")
    bench.add_argument("--link-delays", default="0",
                       help="comma-separated one-way latencies (ms) of a remote drafter's links, for gRPC modes")
    bench.add_argument("--min-pass-ms", type=float, default=0.0,
                       help="gRPC modes: every verifier pass lasts at least this long (emulates a GPU-bound target)")
    bench.add_argument("--drafter-nice", type=int, default=0,
                       help="gRPC modes: run the drafter at this niceness (19: it takes only the CPU the verifier "
                            "leaves, as a drafter on its own machine never slows the verifier's pass)")
    bench.add_argument("--drafter-idle", action="store_true",
                       help="gRPC modes: run the drafter in the idle scheduling class (chrt --idle: it runs only "
                            "when nothing else wants the CPU)")
    bench.add_argument("--guess-count", type=positive_int, default=GUESS_COUNT,
                       help="-guess modes: guesses per round, the most likely verdicts (the drafter's --guess-count)")
    bench.add_argument("--guess-width", type=positive_int, default=None,
                       help="-guess modes: instead, this many per acceptance length (the drafter's --guess-width)")
    bench.add_argument("--split-cores", action="store_true",
                       help="gRPC modes: the verifier alone on the last core, the drafter and the orchestrator on the "
                            "others, one torch thread each (roles that never take each other's CPU, as on their own "
                            "machines)")


def _add_comparison_flags(bench) -> None:
    """What runs beside the modes: each again under load, a chosen subset, llama.cpp's plain decoding."""
    bench.add_argument("--concurrency", default="",
                       help="comma-separated client counts: every SpecGrove mode again under load, beside "
                            "transformers' generate over padded batches (e.g. 1,2,4,8,16)")
    bench.add_argument("--modes", default="", help="comma-separated subset of modes (default: all)")
    bench.add_argument("--llama-cpp", default=None, metavar="PATH",
                       help="a llama.cpp build (llama-bench, or its bin/ folder): its plain decoding of the "
                            "default target's GGUF beside the modes")


def _add_output_flags(bench) -> None:
    """Where the report goes, and how much of a run to do."""
    bench.add_argument("--json", default=None, help="write the report as JSON to this path")
    bench.add_argument("--plot", default=None, help="write a PNG plot to this path")
    bench.add_argument("--quick", action="store_true", help="2 prompts, 24 tokens, K = 4: a smoke run")
    bench.add_argument("--no-progress", action="store_true")


def add_parser(sub) -> None:
    """The bench subcommand and its flags."""
    bench = sub.add_parser("bench", help="every decoding mode side by side on one workload, same run")
    _add_workload_flags(bench)
    _add_in_process_mode_flags(bench)
    _add_grpc_mode_flags(bench)
    _add_comparison_flags(bench)
    _add_output_flags(bench)
    bench.set_defaults(func=cmd_bench)
