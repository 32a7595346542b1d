"""The ``specgrove`` command line: generate text (plain or speculative) and run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from specgrove.assemble import EngineSpec, assemble
from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET, default_cache_dir
from specgrove.errors import SpecGroveError
from specgrove.sampling import SamplingParams

DEMO_PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring."


def _engine_spec(args, mode: str | None = None) -> EngineSpec:
    return EngineSpec(
        mode=mode or args.mode, target=args.target, draft=args.draft, draft_len=args.draft_len,
        tree_budget=getattr(args, "tree_budget", None), tree_depth=getattr(args, "tree_depth", None),
        profile=getattr(args, "profile", None), greedy=getattr(args, "temperature", 0.0) == 0.0,
        stop_policy=getattr(args, "stop_policy", "adaedl"), adaedl_gamma=getattr(args, "adaedl_gamma", 0.2),
        adaedl_lambda=getattr(args, "adaedl_lambda", 0.5),
    )


def _params(args) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        stop_token_ids=tuple(args.stop_token_id),
        stop=tuple(args.stop),
    )


def cmd_generate(args) -> int:
    params = _params(args).validate()  # fail on bad parameters before loading any model
    built = assemble(_engine_spec(args), args.cache_dir)
    target, engine = built.target, built.engine
    prompt_ids = target.chat_prompt(args.prompt) if args.chat else target.encode(args.prompt)
    generation = engine.stream(prompt_ids, params)
    for chunk in generation:
        if not args.json:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    result = generation.result
    if args.json:
        record = {"mode": args.mode, "engine": built.description,
                  "draft": None if args.mode == "ar" else (args.draft or DEFAULT_DRAFT), **result.summary()}
        print(json.dumps(record))
    else:
        sys.stdout.write("\n")
        print(
            f"[{result.num_generated_tokens} tokens, {result.tokens_per_s:.1f} tok/s, "
            f"mean accepted length {result.mean_accepted_length:.2f}, finish {result.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def cmd_demo(args) -> int:
    """Generate the same chat answer with plain decoding and with chain speculation; print speed."""
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    rows = []
    loaded: dict = {}  # both engines share the loaded target
    for mode in ("ar", "chain"):
        built = assemble(_engine_spec(args, mode), args.cache_dir, loaded)
        prompt_ids = built.target.chat_prompt(args.prompt)
        built.engine.generate(prompt_ids, SamplingParams(max_new_tokens=8))  # warm-up, not timed
        rows.append((mode, built.engine.generate(prompt_ids, params)))
    print(rows[-1][1].text.strip())
    print()
    ar_speed = rows[0][1].tokens_per_s
    for mode, result in rows:
        print(
            f"{mode:6s} {result.num_generated_tokens:4d} tokens  {result.tokens_per_s:6.1f} tok/s  "
            f"x{result.tokens_per_s / ar_speed:4.2f} vs ar  mean accepted length {result.mean_accepted_length:.2f}"
        )
    same = rows[0][1].token_ids == rows[1][1].token_ids
    print(f"greedy outputs identical: {same}")
    return 0 if same else 1


def cmd_bench(args) -> int:
    from specgrove.bench import BenchConfig, format_table, plot, run_bench

    if args.quick:  # a smoke run: under 2 minutes on 2 cores
        args.num_prompts, args.max_new_tokens, args.draft_lens = 2, 24, "4"
    config = BenchConfig(
        workload=args.workload,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        target=args.target,
        draft=args.draft,
        draft_lens=tuple(int(k) for k in args.draft_lens.split(",") if k),
        tree_budgets=tuple(int(m) for m in args.tree_budgets.split(",") if m),
        tree_auto=args.tree_auto,
        stop_policies=tuple(p for p in args.stop_policies.split(",") if p),
        modes=tuple(m for m in args.modes.split(",") if m),
    )
    SamplingParams(temperature=config.temperature, max_new_tokens=config.max_new_tokens).validate()
    config.mode_names()  # rejects unknown modes before loading models
    report = run_bench(config, args.cache_dir, progress=not args.no_progress)
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_calibrate(args) -> int:
    from drafter.model_drafter import ModelDrafter
    from specgrove.calibrate import calibrate, profile_path
    from specgrove.models import check_same_vocabulary, load_model

    loaded: dict = {}  # a layer-slice draft shares the target's weights
    target = load_model(args.target, args.cache_dir, loaded)
    draft = load_model(args.draft, args.cache_dir, loaded)
    check_same_vocabulary(target, draft)
    profile = calibrate(target, draft, ModelDrafter(draft), num_prompts=args.num_prompts, quick=args.quick)
    out = args.out or profile_path(args.cache_dir, target.name, draft.name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(profile.to_json())
    print(profile.to_json())
    print(f"wrote {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specgrove", description=__doc__)
    parser.add_argument("--cache-dir", type=os.path.expanduser, default=None,
                        help="where converted models are cached (default $SPECGROVE_CACHE_DIR or ~/.cache/specgrove)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--mode", choices=["ar", "chain", "tree"], default="chain")
    gen.add_argument("--draft-len", type=int, default=4, help="K, draft tokens per round (chain)")
    gen.add_argument("--tree-budget", type=int, default=None, help="tree: pin the number of draft nodes")
    gen.add_argument("--tree-depth", type=int, default=None, help="tree: pin the depth")
    gen.add_argument("--profile", default=None, help="tree: calibration profile (default: cached, measured if missing)")
    gen.add_argument("--stop-policy", choices=["adaedl", "static", "max-confidence", "heuristic"], default="adaedl",
                     help="chain/tree draft length policy (default adaedl)")
    gen.add_argument("--adaedl-gamma", type=float, default=0.2, help="AdaEDL entropy scale γ")
    gen.add_argument("--adaedl-lambda", type=float, default=0.5, help="AdaEDL initial threshold λ")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--stop-token-id", action="append", type=int, default=[], help="stop token id (repeatable)")
    gen.add_argument("--target", default=DEFAULT_TARGET, help="'smollm2' or a Hugging Face model directory")
    gen.add_argument("--draft", default=None,
                     help=f"'ngram', 'smollm2:layers=N' or a model directory (default {DEFAULT_DRAFT})")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="plain vs speculative decoding on one chat prompt, with speed")
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument("--max-new-tokens", type=int, default=128)
    demo.add_argument("--draft-len", type=int, default=4)
    demo.add_argument("--target", default=DEFAULT_TARGET)
    demo.add_argument("--draft", default=None)
    demo.set_defaults(func=cmd_demo)

    cal = sub.add_parser("calibrate", help="measure verify/draft costs and acceptance into a profile")
    cal.add_argument("--target", default=DEFAULT_TARGET)
    cal.add_argument("--draft", required=True, help="a draft model: 'smollm2:layers=N' or a directory")
    cal.add_argument("--num-prompts", type=int, default=4)
    cal.add_argument("--quick", action="store_true", help="costs only; acceptance from a prior")
    cal.add_argument("--out", default=None, help="profile path (default: the cache, where generate finds it)")
    cal.set_defaults(func=cmd_calibrate)

    bench = sub.add_parser("bench", help="every decoding mode side by side on one workload, same run")
    bench.add_argument("--workload", choices=["humaneval", "chat"], default="humaneval")
    bench.add_argument("--num-prompts", type=int, default=8)
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--temperature", type=float, default=0.0)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--target", default=DEFAULT_TARGET)
    bench.add_argument("--draft", default=DEFAULT_DRAFT)
    bench.add_argument("--draft-lens", default="2,4,6", help="comma-separated K values for chain modes")
    bench.add_argument("--tree-budgets", default="", help="comma-separated tree sizes (needs a model draft)")
    bench.add_argument("--tree-auto", action="store_true", help="add a tree mode sized by the planner")
    bench.add_argument("--stop-policies", default="",
                       help="comma-separated chain-<policy> modes: adaedl,max-confidence,heuristic,static (K <= 8)")
    bench.add_argument("--modes", default="", help="comma-separated subset of modes (default: all)")
    bench.add_argument("--json", default=None, help="write the report as JSON to this path")
    bench.add_argument("--plot", default=None, help="write a PNG plot to this path")
    bench.add_argument("--quick", action="store_true", help="2 prompts, 24 tokens, K = 4: a smoke run")
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir()
    try:
        return args.func(args)
    except SpecGroveError as err:
        print(f"specgrove: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
