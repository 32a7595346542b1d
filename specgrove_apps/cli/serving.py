"""The serving commands: ``serve`` (one role of the distributed pipeline) and ``up`` (every role on
loopback with a local Redis, as processes or Ray actors)."""

from __future__ import annotations

import os

from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET


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



def add_serve(sub) -> None:
    """The serve subcommand and its flags."""
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


def add_up(sub) -> None:
    """The up subcommand and its flags."""
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
