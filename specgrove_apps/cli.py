"""The ``specgrove`` command line: generate text (plain or speculative) and run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from specgrove.config import (DEFAULT_DRAFT, DEFAULT_TARGET, DRAFT_TRAIN_CONFIG, FEATURE_TRAIN_CONFIG, SHIPPED_DRAFT,
                              SHIPPED_FEATURE_DRAFT, default_cache_dir)
from specgrove.errors import SpecGroveError
from specgrove.sampling import SamplingParams
from specgrove_apps.assemble import EngineSpec, assemble

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
        grammar=_grammar(args),
    )


def _grammar(args):
    """--json-schema (a file or inline JSON) or --regex: structured output."""
    from specgrove.grammar import GrammarSpec

    if getattr(args, "regex", None):
        return GrammarSpec.regex(args.regex)
    if getattr(args, "json_schema", None):
        text = args.json_schema
        if not text.lstrip().startswith("{") and Path(text).is_file():
            text = Path(text).read_text()
        try:
            return GrammarSpec.json_schema(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SystemExit(f"specgrove: --json-schema is neither a file nor JSON: {exc}") from exc
    return None


def cmd_generate(args) -> int:
    params = _params(args).validate()  # fail on bad parameters before loading any model
    if args.server:
        return _generate_remote(args, params)
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


def _generate_remote(args, params: SamplingParams) -> int:
    import time

    import grpc

    from specgrove_apps.client import Client

    client = Client(args.server, auth_token=os.environ.get("SPECGROVE_AUTH_TOKEN") or None)
    started = time.perf_counter()
    spec = {"mode": args.mode, "draft_len": args.draft_len, "tree_budget": args.tree_budget,
            "tree_depth": args.tree_depth}
    sampling = {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p, "seed": params.seed,
                "max_new_tokens": params.max_new_tokens, "stop": list(params.stop),
                "stop_token_ids": list(params.stop_token_ids), "grammar": params.grammar}
    tokens: list[int] = []
    try:
        for response in client.stream(args.prompt, chat=args.chat, session_id=args.session or "",
                                      resume_from=args.resume_from, **spec, **sampling):
            if response.HasField("chunk"):
                tokens += response.chunk.token_ids
                if not args.json:
                    sys.stdout.write(response.chunk.text)
                    sys.stdout.flush()
            else:
                done = response.completion
    except grpc.RpcError as err:
        print(f"\nspecgrove: error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    from specgrove.codec import FINISH_NAMES

    record = {"session_id": done.session_id, "text": done.text, "token_ids": tokens,
              "finish_reason": FINISH_NAMES.get(done.finish_reason, "error"), "seed": done.seed,
              "prompt_tokens": done.usage.prompt_tokens, "num_generated_tokens": done.usage.completion_tokens,
              "num_rounds": done.usage.rounds, "num_draft_tokens": done.usage.num_draft_tokens,
              "num_accepted_tokens": done.usage.num_accepted_tokens, "elapsed_s": round(elapsed, 4),
              "tokens_per_s": round(len(tokens) / elapsed, 3) if elapsed else 0.0}
    if args.json:
        print(json.dumps(record))
    else:
        rounds = max(1, done.usage.rounds)
        sys.stdout.write("\n")
        print(f"[{len(tokens)} tokens, {record['tokens_per_s']:.1f} tok/s over gRPC, mean accepted length "
              f"{(done.usage.num_accepted_tokens + rounds) / rounds:.2f}, finish {record['finish_reason']}, "
              f"session {done.session_id}]", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """Start the services on loopback (Redis, verifier, drafter, orchestrator), generate one chat
    answer through gRPC with plain decoding and with speculation, and print the speeds."""
    import tempfile
    import time
    from pathlib import Path

    from services.roles import start_stack
    from specgrove_apps.client import Client

    draft = args.draft or DEFAULT_DRAFT
    modes = ["ar", "chain"] + ([] if draft == "ngram" else ["tree"])  # trees need a draft model
    logs = Path(tempfile.mkdtemp(prefix="specgrove-demo-"))
    print(f"starting redis, verifier ({args.target}), drafter ({draft}) and orchestrator on loopback "
          f"(logs in {logs}) ...", flush=True)
    stack = start_stack(0, args.target, draft, args.cache_dir, draft_len=args.draft_len, log_dir=logs)
    rows = []
    try:
        client = Client(stack.address)
        for mode in modes:
            client.generate(args.prompt, chat=True, max_new_tokens=8, mode=mode)  # warm-up, not timed
            started = time.perf_counter()
            out = client.generate(args.prompt, chat=True, max_new_tokens=args.max_new_tokens, mode=mode)
            rows.append((mode, out, time.perf_counter() - started))
    finally:
        stack.stop()
    print(rows[-1][1].text.strip())
    print()
    ar_speed = len(rows[0][1].token_ids) / rows[0][2]
    for mode, out, elapsed in rows:
        speed = len(out.token_ids) / elapsed
        rounds = max(1, out.usage["rounds"])
        print(f"{mode:6s} {len(out.token_ids):4d} tokens  {speed:6.1f} tok/s  x{speed / ar_speed:4.2f} vs ar  "
              f"mean accepted length {(out.usage['num_accepted_tokens'] + rounds) / rounds:.2f}  (over gRPC)")
    same = all(out.token_ids == rows[0][1].token_ids for _, out, _ in rows)
    print(f"greedy outputs identical: {same}")
    return 0 if same else 1


def cmd_bench(args) -> int:
    from specgrove_apps.bench import BenchConfig, format_table, plot, run_bench

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
        tree_budgets=tuple(int(m) for m in args.tree_budgets.split(",") if m),
        tree_auto=args.tree_auto,
        stop_policies=tuple(p for p in args.stop_policies.split(",") if p),
        modes=tuple(m for m in args.modes.split(",") if m),
        structured=args.structured,
        grpc_chain_lens=tuple(int(k) for k in args.grpc_chain_lens.split(",") if k),
        grpc_tree=args.grpc_tree,
        grpc_tree_budgets=tuple(int(m) for m in args.grpc_tree_budgets.split(",") if m),
        link_delays=tuple(float(d) for d in args.link_delays.split(",") if d) or (0.0,),
    )
    if config.grpc_chain_lens or config.grpc_tree or config.grpc_tree_budgets:
        # the drafter and verifier processes take turns with this one: idle threads must sleep
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
    from drafter.factory import make_drafter
    from specgrove_apps.calibrate import calibrate, profile_path
    from specgrove.models import load_model

    loaded: dict = {}  # a layer-slice draft shares the target's weights
    target = load_model(args.target, args.cache_dir, loaded)
    drafter, draft = make_drafter(args.draft, target, args.cache_dir, loaded)  # refuses another tokenizer
    if draft is None:
        raise SpecGroveError("calibrate needs a draft model, not the n-gram drafter")
    profile = calibrate(target, draft, drafter, num_prompts=args.num_prompts, quick=args.quick)
    out = args.out or profile_path(args.cache_dir, target.name, draft.name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(profile.to_json())
    print(profile.to_json())
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_eval_draft(args) -> int:
    from specgrove_apps.eval_draft import evaluate
    from drafter.factory import make_drafter
    from specgrove.models import load_model
    from specgrove.workloads import load_workload

    loaded: dict = {}
    target = load_model(args.target, args.cache_dir, loaded)
    drafter, draft = make_drafter(args.draft, target, args.cache_dir, loaded)
    report = {"target": target.name, "draft": args.draft, "max_new_tokens": args.max_new_tokens, "workloads": {}}
    for workload in args.workloads.split(","):
        prompts = load_workload(workload, args.num_prompts)
        ids = [target.chat_prompt(p.text) if p.chat else target.encode(p.text) for p in prompts]
        report["workloads"][workload] = evaluate(target, draft, drafter, ids, args.max_new_tokens, args.draft_len)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=1)
    if args.model_card:
        from pathlib import Path

        from drafter.feature_draft import is_feature_draft
        from drafter.model_card import render, render_feature

        card = Path(args.model_card) / "README.md"
        card.write_text((render_feature if is_feature_draft(Path(args.model_card)) else render)(Path(args.model_card), report))
        print(f"wrote {card}")
    return 0


def cmd_train_draft(args) -> int:
    from pathlib import Path

    if args.kind == "feature":
        from drafter.feature_train import FeatureTrainConfig as Config, run
    else:
        from drafter.train import TrainConfig as Config, run
    defaults = {"feature": (FEATURE_TRAIN_CONFIG, "runs/feature", SHIPPED_FEATURE_DRAFT),
                "model": (DRAFT_TRAIN_CONFIG, "runs/draft", SHIPPED_DRAFT)}[args.kind]
    config = Config.from_file(Path(args.config or defaults[0]))
    out = run(config, Path(args.run_dir or defaults[1]), Path(args.out or defaults[2]), args.cache_dir,
              max_minutes=args.max_minutes)
    print(f"{out}")
    return 0


def cmd_serve(args) -> int:
    from services import roles
    from specgrove import telemetry

    from specgrove.config import SERVE_ENV

    for option, (variable, _) in SERVE_ENV.items():  # a flag wins over its environment variable
        if option != "cache_dir" and os.environ.get(variable) and getattr(args, option) in (None, []):
            value = os.environ[variable]
            setattr(args, option, value.split(",") if option in ("drafter", "verifier") else
                    int(value) if option in ("port", "draft_len", "http_port", "metrics_port") else value)
    for option, default in (("host", "127.0.0.1"), ("port", 50051), ("target", DEFAULT_TARGET),
                            ("mode", "chain"), ("draft_len", 4)):
        if getattr(args, option) is None:
            setattr(args, option, default)
    token = os.environ.get("SPECGROVE_AUTH_TOKEN") or None
    telemetry.setup(f"specgrove-{args.role}", dict(os.environ))
    if args.role == "verifier":
        roles.serve_verifier(args.host, args.port, args.target, args.cache_dir, token, args.link_delay_ms,
                             args.min_pass_ms, args.metrics_port)
    elif args.role == "drafter":
        roles.serve_drafter(args.host, args.port, args.draft or DEFAULT_DRAFT, args.target, args.cache_dir, token,
                            args.metrics_port)
    else:
        if not args.verifier:
            raise SystemExit("specgrove serve orchestrator: at least one --verifier HOST:PORT is required")
        options = roles.OrchestratorOptions(
            host=args.host, port=args.port, target=args.target, drafters=args.drafter, verifiers=args.verifier,
            redis_url=args.redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            mode=args.mode, draft_len=args.draft_len, stop_policy=args.stop_policy,
            draft_timeout_ms=args.draft_timeout_ms, session_ttl_s=args.session_ttl_s, profile=args.profile,
            auth_token=token, http_port=args.http_port)
        roles.serve_orchestrator(options, args.cache_dir)
    return 0


def cmd_up(args) -> int:
    from services import roles

    if args.ray:
        from services.ray_up import start_ray_stack

        ray_stack = start_ray_stack(args.target, args.draft or DEFAULT_DRAFT, args.cache_dir, address=args.address,
                                    redis_url=os.environ.get("REDIS_URL") or None, mode=args.mode,
                                    draft_len=args.draft_len, drafter_accelerator=args.drafter_accelerator,
                                    verifier_accelerator=args.verifier_accelerator)
        print(f"specgrove up --ray: orchestrator actor serving on {ray_stack.address}; Ctrl-C stops it", flush=True)
        try:
            roles._wait_for_signal()
        finally:
            ray_stack.stop()
        return 0

    stack = roles.start_stack(args.port, args.target, args.draft or DEFAULT_DRAFT, args.cache_dir,
                              redis_url=os.environ.get("REDIS_URL") or None, mode=args.mode,
                              draft_len=args.draft_len, link_delay_ms=args.link_delay_ms,
                              http_port=args.http_port if args.http_port >= 0 else None)
    p = stack.ports
    print(f"specgrove up: orchestrator gRPC on {stack.address} (drafter :{p['drafter']}, verifier :{p['verifier']}, "
          f"redis {'REDIS_URL' if os.environ.get('REDIS_URL') else stack.redis.url}); Ctrl-C stops everything",
          flush=True)
    if "http" in p:
        print(f"  OpenAI-compatible API: http://127.0.0.1:{p['http']}/v1 (orchestrator metrics: "
              f"http://127.0.0.1:{p['http']}/metrics)", flush=True)
    print(f"  worker metrics: verifier http://127.0.0.1:{p['verifier_metrics']}/metrics, "
          f"drafter http://127.0.0.1:{p['drafter_metrics']}/metrics", flush=True)
    try:
        roles._wait_for_signal()
    finally:
        stack.stop()
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
                     help=f"'smollm2-feature', 'smollm2-draft', 'ngram', 'ngram+MODEL', 'smollm2:layers=N' or a "
                          f"model directory (default {DEFAULT_DRAFT})")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    shape = gen.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", default=None, help="structured output: a JSON schema (file or inline JSON)")
    shape.add_argument("--regex", default=None, help="structured output: the output must match this regex")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    gen.add_argument("--server", default=None, help="HOST:PORT of an orchestrator (specgrove up): generate over gRPC")
    gen.add_argument("--session", default=None, help="with --server: resume this session id")
    gen.add_argument("--resume-from", type=int, default=0, help="with --session: first token index to send again")
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
    cal.add_argument("--draft", required=True, help="a draft model: 'smollm2-feature', 'smollm2-draft', "
                                                       "'smollm2:layers=N' or a directory")
    cal.add_argument("--num-prompts", type=int, default=4)
    cal.add_argument("--quick", action="store_true", help="costs only; acceptance from a prior")
    cal.add_argument("--out", default=None, help="profile path (default: the cache, where generate finds it)")
    cal.set_defaults(func=cmd_calibrate)

    train = sub.add_parser("train-draft", help="train a draft for the target (resumable)")
    train.add_argument("--kind", choices=["feature", "model"], default="feature",
                       help="feature: the EAGLE-style head on the target's features (smollm2-feature); "
                            "model: the distilled independent draft (smollm2-draft)")
    train.add_argument("--config", default=None, help="training config JSON (default: the shipped draft's)")
    train.add_argument("--run-dir", default=None, help="data, checkpoints and logs (resumes from here; "
                                                       "default runs/feature or runs/draft)")
    train.add_argument("--out", default=None, help="where the finished draft is written (default: the shipped one)")
    train.add_argument("--max-minutes", type=float, default=None, help="stop training after this long (resume later)")
    train.set_defaults(func=cmd_train_draft)

    serve = sub.add_parser("serve", help="run one role of the distributed pipeline (gRPC)")
    serve.add_argument("role", choices=["orchestrator", "drafter", "verifier"])
    serve.add_argument("--host", default=None, help="default $SPECGROVE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default $SPECGROVE_PORT or 50051")
    serve.add_argument("--target", default=None, help="verifier: the model; orchestrator: its tokenizer")
    serve.add_argument("--draft", default=None, help=f"drafter: the draft (default {DEFAULT_DRAFT}); a feature "
                                                     "draft reads the target's features from the verifier")
    serve.add_argument("--drafter", action="append", default=[], help="orchestrator: a drafter HOST:PORT (repeatable)")
    serve.add_argument("--verifier", action="append", default=[], help="orchestrator: a verifier HOST:PORT (repeatable)")
    serve.add_argument("--redis-url", default=None, help="orchestrator: Redis URL (default $REDIS_URL)")
    serve.add_argument("--mode", choices=["ar", "chain", "tree"], default=None, help="orchestrator: default mode")
    serve.add_argument("--draft-len", type=int, default=None)
    serve.add_argument("--stop-policy", choices=["adaedl", "static", "max-confidence", "heuristic"], default="adaedl")
    serve.add_argument("--draft-timeout-ms", type=int, default=5000, help="slower drafts fall back to K = 0")
    serve.add_argument("--session-ttl-s", type=int, default=3600)
    serve.add_argument("--profile", default=None, help="orchestrator: calibration profile (verify-cost curve)")
    serve.add_argument("--link-delay-ms", type=float, default=0.0, help="verifier: delay every Verify (a slow link)")
    serve.add_argument("--min-pass-ms", type=float, default=0.0,
                       help="verifier: every pass lasts at least this long (emulates a GPU-bound large target)")
    serve.add_argument("--http-port", type=int, default=None,
                       help="orchestrator: serve the OpenAI-compatible API and /metrics on this port (0 = any)")
    serve.add_argument("--metrics-port", type=int, default=None, help="drafter/verifier: serve /metrics on this port")
    serve.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="local Redis + verifier + drafter + orchestrator on loopback")
    up.add_argument("--port", type=int, default=50051, help="the orchestrator's port")
    up.add_argument("--target", default=DEFAULT_TARGET)
    up.add_argument("--draft", default=None)
    up.add_argument("--mode", choices=["ar", "chain", "tree"], default="chain")
    up.add_argument("--draft-len", type=int, default=4)
    up.add_argument("--link-delay-ms", type=float, default=0.0)
    up.add_argument("--http-port", type=int, default=8000,
                    help="the OpenAI-compatible API and /metrics (0 = any free port, -1 = off)")
    up.add_argument("--ray", action="store_true", help="run the roles as Ray actors (a local cluster unless --address)")
    up.add_argument("--address", default=None, help="with --ray: the Ray cluster to join (e.g. ray://head:10001)")
    up.add_argument("--drafter-accelerator", default=None, help="with --ray: drafter GPU type, e.g. L4")
    up.add_argument("--verifier-accelerator", default=None, help="with --ray: verifier GPU type, e.g. H100")
    up.set_defaults(func=cmd_up)

    ev = sub.add_parser("eval-draft", help="a draft's agreement, acceptance and cost against the target")
    ev.add_argument("--target", default=DEFAULT_TARGET)
    ev.add_argument("--draft", default=DEFAULT_DRAFT)
    ev.add_argument("--workloads", default="humaneval,chat", help="comma-separated: humaneval, chat")
    ev.add_argument("--num-prompts", type=int, default=8)
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--draft-len", type=int, default=4, help="K of the chain run (mean accepted length)")
    ev.add_argument("--json", default=None, help="also write the report here")
    ev.add_argument("--model-card", default=None, help="write DIR/README.md (the draft's model card) from this run")
    ev.set_defaults(func=cmd_eval_draft)

    bench = sub.add_parser("bench", help="every decoding mode side by side on one workload, same run")
    bench.add_argument("--workload", choices=["humaneval", "chat", "json"], default="humaneval")
    bench.add_argument("--structured", action="store_true",
                       help="json workload: constrain answers by their schema (SpecGrove modes; ratios vs specgrove-ar)")
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
    bench.add_argument("--grpc-chain-lens", default="", help="comma-separated K: grpc-chain-kK modes over gRPC")
    bench.add_argument("--grpc-tree", action="store_true", help="a grpc-tree mode (network-aware planner)")
    bench.add_argument("--grpc-tree-budgets", default="", help="comma-separated pinned sizes: grpc-tree-mM modes")
    bench.add_argument("--link-delays", default="0", help="comma-separated injected link delays (ms) for gRPC modes")
    bench.add_argument("--modes", default="", help="comma-separated subset of modes (default: all)")
    bench.add_argument("--json", default=None, help="write the report as JSON to this path")
    bench.add_argument("--plot", default=None, help="write a PNG plot to this path")
    bench.add_argument("--quick", action="store_true", help="2 prompts, 24 tokens, K = 4: a smoke run")
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = "INFO" if args.verbose else os.environ.get("SPECGROVE_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), format="%(message)s")
    args.cache_dir = default_cache_dir() if args.cache_dir is None else Path(args.cache_dir)
    try:
        return args.func(args)
    except SpecGroveError as err:
        print(f"specgrove: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
