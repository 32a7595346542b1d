"""``specgrove demo``: plain vs speculative decoding of one chat prompt through the local services."""

from __future__ import annotations

from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET

DEMO_PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring."


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



def add_parser(sub) -> None:
    """The demo subcommand and its flags."""
    demo = sub.add_parser("demo", help="plain vs speculative decoding on one chat prompt, with speed")
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument("--max-new-tokens", type=int, default=128)
    demo.add_argument("--draft-len", type=int, default=4)
    demo.add_argument("--target", default=DEFAULT_TARGET)
    demo.add_argument("--draft", default=None)
    demo.set_defaults(func=cmd_demo)
