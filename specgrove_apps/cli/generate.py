"""``specgrove generate``: text from a prompt, in process (plain, chain or tree) or over gRPC
(``--server``), optionally constrained by a JSON schema or a regex."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET
from specgrove.sampling import SamplingParams
from specgrove_apps.assemble import EngineSpec, assemble
from specgrove_apps.cli.tls_flags import add_tls_flags, tls_from


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

    client = Client(args.server, auth_token=os.environ.get("SPECGROVE_AUTH_TOKEN") or None, tls=tls_from(args))
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



def add_parser(sub) -> None:
    """The generate subcommand and its flags."""
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
    add_tls_flags(gen, server=False)  # with --server: TLS to the orchestrator (--tls-ca), mTLS (--tls-cert/--tls-key)
    gen.set_defaults(func=cmd_generate)
