"""``specgrove demo`` end to end on a tiny target (its own draft, so drafts are accepted): both
workloads, speed-ups, acceptance lengths, the rounds breakdown from the orchestrator's
``specgrove:rounds_total`` matching the client's round counts, and greedy outputs identical to
plain decoding's."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from specgrove.tiny import build_tiny_llama
from specgrove_apps.cli import build_parser, demo
from specgrove_apps.client import Completion

MAX_NEW = 24
ROW = re.compile(r"^  (ar|chain|tree)\s+(\d+)\s+([\d.]+)\s+x([\d.]+)\s+([\d.]+|-)\s+"
                 r"(\d+) rounds: (\d+) drafted(?: \(([^)]*)\))?, (\d+) plain(?: \(([^)]*)\))?$")


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory) -> Path:
    """A tiny target that never emits EOS greedily: every generation runs to max_new_tokens."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_long"), seed=0, logit_scale=20.0, suppress_eos=True)


@pytest.fixture(scope="module")
def demo_run(long_dir, tmp_path_factory):
    args = build_parser().parse_args([
        "demo", "--target", str(long_dir), "--draft", str(long_dir), "--max-new-tokens", str(MAX_NEW),
        "--code-prompt", "def add(a, b):\n    return", "--prompt", "tell me a story about a cat"])
    args.cache_dir = tmp_path_factory.mktemp("cache")
    workloads = [demo.Workload("code", args.code_prompt, chat=False), demo.Workload("chat", args.prompt, chat=True)]
    results = demo.run_demo(args, workloads)
    return results, demo.format_report(results)


def _breakdown(text: str | None) -> Counter:
    return Counter({plan: int(n) for plan, n in (part.split() for part in text.split(", "))} if text else {})


def test_report_shows_both_workloads_with_numbers_that_match_the_runs(demo_run):
    results, report = demo_run
    print(report)
    assert list(results) == ["code", "chat"]
    for name, runs in results.items():
        assert [run.mode for run in runs] == ["ar", "chain", "tree"]
        table = report[report.index(f"\n{name}:\n"):].strip().split("\n\n")[0]
        rows = [ROW.match(line) for line in table.splitlines()[2:]]
        assert all(rows), table
        for run, row in zip(runs, rows, strict=True):
            mode, tokens, _, speedup, length, rounds, drafted, why_drafted, plain, why_plain = row.groups()
            assert mode == run.mode and int(tokens) == len(run.out.token_ids) == MAX_NEW
            assert float(speedup) == pytest.approx(run.tokens_per_s / runs[0].tokens_per_s, abs=0.006)
            # the orchestrator's rounds for this generation add up to the rounds the client was told of
            assert int(drafted) + int(plain) == int(rounds) == run.out.usage["rounds"] > 0
            assert int(drafted) == run.drafted and int(plain) == run.plain
            assert sum(_breakdown(why_drafted).values()) == int(drafted)
            assert sum(_breakdown(why_plain).values()) == int(plain)
            if run.drafted:  # 1 + accepted draft tokens per drafting round
                assert float(length) == pytest.approx(1 + run.out.usage["num_accepted_tokens"] / run.drafted, abs=0.006)
            else:
                assert length == "-"
        ar, chain, tree = runs
        assert ar.rounds == Counter({("ar", False): MAX_NEW}) and ar.acceptance_length is None  # a step per token
        assert ar.out.usage["num_draft_tokens"] == 0
        for run in (chain, tree):  # the target is its own draft: its drafts are accepted
            assert run.acceptance_length is None or run.acceptance_length > 1.5


def test_greedy_outputs_are_identical_and_the_report_says_so(demo_run):
    results, report = demo_run
    for runs in results.values():
        assert all(run.out.token_ids == runs[0].out.token_ids for run in runs)
    assert "greedy outputs identical to plain decoding: code yes, chat yes" in report
    assert re.search(r"takeaway: code: speculation (pays|breaks even|does not pay) x[\d.]+ \((chain|tree), "
                     r"acceptance length [\d.]+, \d+ of \d+ rounds drafted\); chat: speculation", report)
    legend = report[report.index("rounds: why"):].split("\n\n")[0]
    assert "ar (plain): plain decoding mode" in legend
    seen = {key for runs in results.values() for run in runs for key in run.rounds}
    assert len(legend.splitlines()) == 1 + len(seen)  # one line per reason that occurred


def _run(mode: str, tokens: list[int], rounds: Counter, seconds: float = 1.0) -> demo.Run:
    usage = {"rounds": sum(rounds.values()), "num_accepted_tokens": 3, "num_draft_tokens": 8,
             "prompt_tokens": 4, "completion_tokens": len(tokens)}
    return demo.Run(mode, Completion("s", tokens, "text", "length", 0, usage), seconds, rounds)


def test_a_differing_output_fails_the_demo(monkeypatch, capsys):
    rounds = Counter({("plan", True): 2, ("measure", False): 1})
    results = {"code": [_run("ar", [1, 2, 3], Counter({("ar", False): 3}), 2.0), _run("chain", [1, 2, 3], rounds)],
               "chat": [_run("ar", [4, 5], Counter({("ar", False): 2})), _run("chain", [4, 6], rounds)]}
    monkeypatch.setattr(demo, "run_demo", lambda args, workloads: results)
    args = build_parser().parse_args(["demo", "--code-prompt", "def f():"])
    assert demo.cmd_demo(args) == 1
    out = capsys.readouterr().out
    assert "greedy outputs identical to plain decoding: code yes, chat NO" in out
    assert "3 rounds: 2 drafted (plan 2), 1 plain (measure 1)" in out
    assert "acceptance length 2.50" in out  # 1 + 3 accepted / 2 drafting rounds
    assert "code: speculation pays x2.00" in out
