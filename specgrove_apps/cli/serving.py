"""The serving commands: ``serve`` (one role of the distributed pipeline) and ``up`` (every role on
loopback with a local Redis, as processes or Ray actors)."""

from __future__ import annotations

import argparse
import os

from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET, GUESS_COUNT, MAX_BATCH
from specgrove.limits import Limits
from specgrove_apps.cli.tls_flags import add_tls_flags, tls_environ, tls_from


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_limit_flags(parser) -> None:
    """--max-message-bytes, --max-prompt-tokens, --max-stop-strings, --max-stop-string-chars,
    --max-streams-per-client; each defaults to its SPECGROVE_MAX_* variable, then to Limits()."""
    for name, variable in Limits.ENV.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help=f"default ${variable} or {getattr(Limits(), name)}")


def limits_from(args) -> Limits:
    return Limits.from_values({name: getattr(args, name) for name in Limits.ENV}, os.environ)


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
    tls = tls_from(args)
    limits = limits_from(args)
    telemetry.setup(f"specgrove-{args.role}", dict(os.environ))
    verifier = roles.VerifierOptions(
        host=args.host, port=args.port, target=args.target, auth_token=token, link_delay_ms=args.link_delay_ms,
        min_pass_ms=args.min_pass_ms, metrics_port=args.metrics_port, tls=tls, limits=limits,
        max_kv_tokens=args.max_kv_tokens, max_batch=args.max_batch, drain_s=args.drain_s)
    if args.role == "verifier":
        roles.serve_verifier(verifier, args.cache_dir)
    elif args.role == "worker":
        roles.serve_worker(roles.WorkerOptions(verifier, args.draft or DEFAULT_DRAFT, args.max_batch), args.cache_dir)
    elif args.role == "drafter":
        roles.serve_drafter(roles.DrafterOptions(
            host=args.host, port=args.port, draft=args.draft or DEFAULT_DRAFT, target=args.target, auth_token=token,
            metrics_port=args.metrics_port, tls=tls, verifiers=tuple(args.verifier), limits=limits,
            link_delay_ms=args.link_delay_ms, max_batch=args.max_batch, min_pass_ms=args.min_pass_ms,
            guess_count=args.guess_count, guess_width=args.guess_width, drain_s=args.drain_s), args.cache_dir)
    else:
        if not args.verifier:
            raise SystemExit("specgrove serve orchestrator: at least one --verifier HOST:PORT is required")
        options = roles.OrchestratorOptions(
            host=args.host, port=args.port, target=args.target, drafters=args.drafter, verifiers=args.verifier,
            redis_url=args.redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            mode=args.mode, draft_len=args.draft_len, stop_policy=args.stop_policy,
            draft_timeout_ms=args.draft_timeout_ms, session_ttl_s=args.session_ttl_s,
            redis_retry_s=args.redis_retry_s, profile=args.profile,
            auth_token=token, http_port=args.http_port, tls=tls, limits=limits, max_sessions=args.max_sessions,
            queue_timeout_s=args.queue_timeout_s, draft_ahead=args.draft_ahead,
            guess_ahead=args.guess_ahead)
        roles.serve_orchestrator(options, args.cache_dir)
    return 0


def cmd_up(args) -> int:
    from services import roles

    if args.ray:
        from services.ray_up import RayStackOptions, start_ray_stack

        if args.guess_ahead:
            raise SystemExit("specgrove up: --guess-ahead is not available with --ray (its roles run without it)")

        ray_stack = start_ray_stack(args.target, args.draft or DEFAULT_DRAFT, args.cache_dir, RayStackOptions(
            address=args.address, redis_url=os.environ.get("REDIS_URL") or None, mode=args.mode,
            draft_len=args.draft_len, drafter_accelerator=args.drafter_accelerator,
            verifier_accelerator=args.verifier_accelerator,
            auth_token=os.environ.get("SPECGROVE_AUTH_TOKEN") or None, tls=tls_from(args)))
        print(f"specgrove up --ray: orchestrator actor serving on {ray_stack.address}; Ctrl-C stops it", flush=True)
        try:
            roles._wait_for_signal()
        finally:
            ray_stack.stop()
        return 0

    colocated = not (args.split_workers or args.guess_ahead)  # guesses pay only on a drafter of its own
    stack = roles.start_stack(args.port, args.target, args.draft or DEFAULT_DRAFT, args.cache_dir,
                              redis_url=os.environ.get("REDIS_URL") or None, mode=args.mode,
                              draft_len=args.draft_len, link_delay_ms=args.link_delay_ms,
                              http_port=args.http_port if args.http_port >= 0 else None,
                              extra_orchestrator=(() if args.draft_ahead else ("--no-draft-ahead",))
                              + (("--guess-ahead",) if args.guess_ahead else ()),
                              guess_count=args.guess_count, guess_width=args.guess_width,
                              redis_dir=args.cache_dir / "redis", env={**os.environ, **tls_environ(tls_from(args))},
                              colocated=colocated)
    p = stack.ports
    workers = (f"worker :{p['worker']}, drafter and verifier in one process" if colocated
               else f"drafter :{p['drafter']}, verifier :{p['verifier']}")
    print(f"specgrove up: orchestrator gRPC on {stack.address} ({workers}, "
          f"redis {'REDIS_URL' if os.environ.get('REDIS_URL') else stack.redis.url + ', append-only in ' + stack.redis.dir}"
          "); Ctrl-C stops everything",
          flush=True)
    if "http" in p:
        url = f"{'https' if stack.tls.serves_tls else 'http'}://127.0.0.1:{p['http']}"
        print(f"  OpenAI-compatible API: {url}/v1 (orchestrator metrics: {url}/metrics)", flush=True)
    names = ("worker",) if colocated else ("verifier", "drafter")
    print("  worker metrics: " + ", ".join(f"{name} http://127.0.0.1:{p[name + '_metrics']}/metrics" for name in names),
          flush=True)
    try:
        roles._wait_for_signal()
    finally:
        stack.stop()
    return 0



def add_serve(sub) -> None:
    """The serve subcommand and its flags."""
    serve = sub.add_parser("serve", help="run one role of the distributed pipeline (gRPC)")
    serve.add_argument("role", choices=["orchestrator", "drafter", "verifier", "worker"],
                       help="worker: a drafter and a verifier in one process (name it as both to the orchestrator; "
                            "the draft verifies without a hop)")
    serve.add_argument("--host", default=None, help="default $SPECGROVE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default $SPECGROVE_PORT or 50051")
    serve.add_argument("--target", default=None, help="verifier: the model; orchestrator: its tokenizer")
    serve.add_argument("--draft", default=None, help=f"drafter: the draft (default {DEFAULT_DRAFT}); a feature "
                                                     "draft reads the target's features from the verifier")
    serve.add_argument("--drafter", action="append", default=[], help="orchestrator: a drafter HOST:PORT (repeatable)")
    serve.add_argument("--verifier", action="append", default=[],
                       help="orchestrator: a verifier HOST:PORT (repeatable); drafter: a verifier it may stream to "
                            "(repeatable; none given: any)")
    serve.add_argument("--redis-url", default=None, help="orchestrator: Redis URL (default $REDIS_URL)")
    serve.add_argument("--mode", choices=["ar", "chain", "tree"], default=None, help="orchestrator: default mode")
    serve.add_argument("--draft-len", type=int, default=None)
    serve.add_argument("--stop-policy", choices=["adaedl", "static", "max-confidence", "heuristic"], default="adaedl")
    serve.add_argument("--draft-timeout-ms", type=int, default=5000, help="slower drafts fall back to K = 0")
    serve.add_argument("--no-draft-ahead", dest="draft_ahead", action="store_false",
                       help="orchestrator: a drafter draws each round only when asked (default: it runs the next "
                            "round as soon as it holds this one's verdict)")
    serve.add_argument("--guess-ahead", action="store_true",
                       help="orchestrator, with draft-ahead, on chains: while a round is verified the drafter also "
                            "draws the next one under each likely verdict, and the verifier starts the one that "
                            "matches at once (pays where the verifier's pass leaves the drafter idle: a GPU)")
    serve.add_argument("--guess-count", type=positive_int, default=GUESS_COUNT,
                       help="drafter: with --guess-ahead, the guesses per round: the verdicts the draft itself deems "
                            "most likely over every acceptance length (more hit more often and make each draft pass "
                            "wider)")
    serve.add_argument("--guess-width", type=positive_int, default=None,
                       help="drafter: instead of --guess-count, this many guesses per acceptance length (the draft's "
                            "best tokens after it, other than the one it drafted)")
    serve.add_argument("--session-ttl-s", type=int, default=3600)
    serve.add_argument("--redis-retry-s", type=float, default=10.0,
                       help="orchestrator: how long every session-store call rides through a Redis outage")
    serve.add_argument("--max-sessions", type=int, default=64,
                       help="orchestrator: concurrent generations; more wait in a queue, then RESOURCE_EXHAUSTED")
    serve.add_argument("--queue-timeout-s", type=float, default=2.0,
                       help="orchestrator: how long a generation waits for a free slot")
    serve.add_argument("--profile", default=None, help="orchestrator: calibration profile (verify-cost curve)")
    serve.add_argument("--http-port", type=int, default=None,
                       help="orchestrator: serve the OpenAI-compatible API and /metrics on this port (0 = any)")
    _add_worker_flags(serve)
    add_tls_flags(serve, server=True)
    add_limit_flags(serve)
    serve.set_defaults(func=cmd_serve)


def _add_worker_flags(serve) -> None:
    """serve's flags for the drafter and the verifier: their batches, KV budget, drain, and the
    links and passes a benchmark emulates."""
    serve.add_argument("--max-kv-tokens", type=int, default=None,
                       help="verifier: KV budget in tokens over all sessions (least recently used evicted)")
    serve.add_argument("--max-batch", type=int, default=MAX_BATCH,
                       help="verifier: the most sessions' rounds verified in one forward pass; drafter: the most "
                       "sessions' tree levels drawn in one draft pass (1: no batching)")
    serve.add_argument("--drain-s", type=float, default=30.0,
                       help="verifier and drafter: on SIGTERM, report NOT_SERVING and draining, and wait up to this "
                       "long for the orchestrators to move their sessions away before stopping")
    serve.add_argument("--link-delay-ms", type=float, default=0.0,
                       help="verifier and drafter: emulate a remote drafter whose links have this one-way latency "
                       "(each message and reply of Draft, Verify and Features travels it; not Decode; a worker: "
                       "Draft only)")
    serve.add_argument("--min-pass-ms", type=float, default=0.0,
                       help="verifier and drafter: every pass lasts at least this long (emulates a model on a GPU, "
                       "whose pass costs about the same for one token as for dozens)")
    serve.add_argument("--metrics-port", type=int, default=None, help="drafter/verifier: serve /metrics on this port")


def add_up(sub) -> None:
    """The up subcommand and its flags."""
    up = sub.add_parser("up", help="local Redis + a worker (drafter and verifier) + orchestrator on loopback")
    up.add_argument("--port", type=int, default=50051, help="the orchestrator's port")
    up.add_argument("--target", default=DEFAULT_TARGET)
    up.add_argument("--draft", default=None)
    up.add_argument("--mode", choices=["ar", "chain", "tree"], default="chain")
    up.add_argument("--draft-len", type=int, default=4)
    up.add_argument("--split-workers", action="store_true",
                    help="run the drafter and the verifier as processes of their own, the drafter streaming each "
                         "tree to the verifier over gRPC (as on separate machines; --guess-ahead implies it). "
                         "Default: one worker process holding both (serve worker), which verifies without a hop")
    up.add_argument("--link-delay-ms", type=float, default=0.0,
                    help="emulate a remote drafter: each message of its links travels this long (with one worker "
                         "process: the orchestrator's Draft calls)")
    up.add_argument("--no-draft-ahead", dest="draft_ahead", action="store_false",
                    help="the drafter draws each round only when asked (default: as soon as the last one's verdict is in)")
    up.add_argument("--guess-ahead", action="store_true",
                    help="with draft-ahead, on chains: the drafter also guesses each round's verdict and the verifier "
                         "starts the guessed next round that matches at once")
    up.add_argument("--guess-count", type=positive_int, default=GUESS_COUNT,
                    help="with --guess-ahead: the guesses per round, the most likely verdicts (the drafter's --guess-count)")
    up.add_argument("--guess-width", type=positive_int, default=None,
                    help="with --guess-ahead: instead, this many guesses per acceptance length (the drafter's --guess-width)")
    up.add_argument("--http-port", type=int, default=8000,
                    help="the OpenAI-compatible API and /metrics (0 = any free port, -1 = off)")
    up.add_argument("--ray", action="store_true", help="run the roles as Ray actors (a local cluster unless --address)")
    up.add_argument("--address", default=None, help="with --ray: the Ray cluster to join (e.g. ray://head:10001)")
    up.add_argument("--drafter-accelerator", default=None, help="with --ray: drafter GPU type, e.g. L4")
    up.add_argument("--verifier-accelerator", default=None, help="with --ray: verifier GPU type, e.g. H100")
    add_tls_flags(up, server=True)  # every role gets them (one certificate: it must name 127.0.0.1)
    up.set_defaults(func=cmd_up)
