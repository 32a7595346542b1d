"""The benchmark's gRPC modes: the same prompts through a local deployment (``specgrove up``'s
processes: Redis, verifier, drafter, orchestrator), one deployment per injected link delay.

Mode names: ``grpc-chain-kK`` (a static chain of K, the in-process ``chain-kK``'s twin),
``grpc-tree`` (the network-aware planner), ``grpc-tree-mM`` (a pinned size), each with
``-dD`` appended when D ms of delay are injected on the drafter's links, ``-serial`` when
the deployment runs without draft-ahead (each round drawn only when the orchestrator asks: the
same run's baseline), and ``-guess`` when it runs guessed
draft-ahead (``--guess-ahead``: the next round drawn under guesses of each verdict). Every process writes its spans to a
JSON-lines trace file, from which ``round_split`` takes the per-round split of time into draft,
verify, network and the overlap draft-ahead won, and the bytes each round put on the wire.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from services.roles import CONTROL_NICE
from specgrove.config import GUESS_COUNT
from specgrove_apps.bench_metrics import Sample


def grpc_mode_names(chain_lens: tuple[int, ...], tree: bool, tree_budgets: tuple[int, ...],
                    delays: tuple[float, ...], chain_auto: bool = False, serial: bool = False,
                    guess: bool = False, split: bool = False) -> list[str]:
    """Every mode runs on the default deployment (``serve worker``: the drafter and the verifier in
    one process) and, each right after it: split, on separate drafter and verifier processes
    (``-split``); serial, on those without draft-ahead (``-serial``); guess, on those with
    guessed draft-ahead (``-guess``)."""
    names = []
    for delay in delays:
        suffix = f"-d{delay:g}" if delay else ""
        modes = [f"grpc-chain-k{k}{suffix}" for k in chain_lens]
        modes += [f"grpc-chain-auto{suffix}"] if chain_auto else []  # no draft_len named: the served default
        modes += [f"grpc-tree{suffix}"] if tree else []
        modes += [f"grpc-tree-m{m}{suffix}" for m in tree_budgets]
        names += [n for mode in modes
                  for n in [mode, *([mode + "-split"] if split else []), *([mode + "-guess"] if guess else []),
                            *([mode + "-serial"] if serial else [])]]
    return names


# The deployments: one worker process (the default), and separate drafter and verifier processes
# with draft-ahead, without it, and with guessed draft-ahead
VARIANTS = ("ahead", "split", "serial", "guess")
# A record's ratios to the same speculation on another deployment of its run: {variant: key}
RATIOS = {"ahead": {"split": "throughput_vs_split"}, "split": {"serial": "throughput_vs_serial"},
          "guess": {"serial": "throughput_vs_serial", "split": "throughput_vs_ahead"}, "serial": {}}


def parse_mode(name: str) -> tuple[dict, float, str]:
    """'grpc-tree-m8-d20-serial' -> ({'mode': 'tree', 'tree_budget': 8}, 20.0, 'serial'): the
    request's speculation, the link delay, and the deployment's draft-ahead (``VARIANTS``)."""
    parts = name.split("-")[1:]
    ahead = parts.pop() if parts[-1] in VARIANTS[1:] else "ahead"
    delay = 0.0
    if parts[-1].startswith("d") and parts[-1][1:].replace(".", "").isdigit():
        delay = float(parts.pop()[1:])
    spec: dict = {"mode": parts[0]}
    for part in parts[1:]:
        if part.startswith("k"):
            spec["draft_len"] = int(part[1:])
        elif part.startswith("m"):
            spec["tree_budget"] = int(part[1:])
    return spec, delay, ahead


def grpc_runner(client, spec: dict, sessions: set[str]):
    """A runner through the orchestrator; the session ids it creates are added to `sessions`."""

    def run(prompt_ids: list[int], params) -> Sample:
        started = time.perf_counter()
        ttft = None
        tokens, drafted, accepted = [], [], []
        sampling = {"temperature": params.temperature, "seed": params.seed, "max_new_tokens": params.max_new_tokens}
        for response in client.stream(token_ids=prompt_ids, **spec, **sampling):
            if response.HasField("chunk"):
                if ttft is None:
                    ttft = time.perf_counter() - started
                tokens += response.chunk.token_ids
                sessions.add(response.chunk.session_id)
                drafted.append(response.chunk.stats.num_drafted)
                accepted.append(response.chunk.stats.num_accepted)
        return Sample("", tokens, time.perf_counter() - started, ttft or 0.0, drafted, accepted)

    return run


def round_split(trace_path: Path, sessions: set[str]) -> dict:
    """Per-round medians from the spans of these sessions: the round as the orchestrator waited
    for it, draft (its levels' compute), verify (the verifier's pass), network and serving
    overhead (every hop: round + overlap − draft − verify), the overlap (the part of a round run
    ahead before the orchestrator asked for it: the time draft-ahead saved), tree bytes, the
    planner's tree (size, depth) and the tokens a round emitted; speculative rounds only, with
    the share of rounds that were (the rest: plain steps) and the shares of those run ahead and
    taken from a guess (guessed draft-ahead: the verifier ran them as soon as the verdict was in).
    Draft and verify come from the round's reply (the round span's attributes) when it has
    them: a round run ahead has its level and pass spans under the previous round's Draft."""
    spans = [json.loads(line) for line in trace_path.read_text().splitlines() if line.strip()]
    by_parent: dict[str, list[dict]] = {}
    for span in spans:
        by_parent.setdefault(span["parent_id"], []).append(span)
    requests = {s["span_id"]: s["attributes"]["specgrove.session_id"] for s in spans
                if s["name"] == "orchestrator Generate" and s["attributes"].get("specgrove.session_id") in sessions}
    ahead_spans = {(s["attributes"].get("specgrove.session_id"), s["attributes"].get("specgrove.step")): s
                   for s in spans if s["name"] == "drafter ahead round"}
    rows, total = [], 0
    for rnd in (s for s in spans if s["name"] == "round" and s["parent_id"] in requests):
        total += 1
        drafts = [c for c in by_parent.get(rnd["span_id"], []) if c["name"] == "drafter Draft"]
        if not drafts:
            continue
        draft_span = drafts[0]
        attrs = rnd["attributes"]
        kids = by_parent.get(draft_span["span_id"], [])
        if "specgrove.draft_ms" in attrs:
            draft_ms, verify_ms = attrs["specgrove.draft_ms"], attrs["specgrove.verify_ms"]
        else:  # a trace from before the reply's timings were recorded on the round
            draft_ms = sum((k["end_ns"] - k["start_ns"]) / 1e6 for k in kids if k["name"] == "draft level")
            verifies = [k["span_id"] for k in kids if k["name"] == "verifier Verify"]
            verify_ms = sum((p["end_ns"] - p["start_ns"]) / 1e6 for v in verifies for p in by_parent.get(v, [])
                            if p["name"] == "verify pass")
        round_ms = (rnd["end_ns"] - rnd["start_ns"]) / 1e6
        overlap_ms = attrs.get("specgrove.overlap_ms", 0.0)
        source = draft_span
        if attrs.get("specgrove.ahead"):  # its levels went out from the round run ahead
            source = ahead_spans.get((requests[rnd["parent_id"]], attrs.get("specgrove.step")), draft_span)
        rows.append((round_ms, draft_ms, verify_ms, round_ms + overlap_ms - draft_ms - verify_ms, overlap_ms,
                     source["attributes"].get("specgrove.tree_bytes", 0),
                     attrs.get("specgrove.tree_size", 0), attrs.get("specgrove.tree_depth", 0),
                     attrs.get("specgrove.accepted", 0) + 1, bool(attrs.get("specgrove.ahead")),
                     bool(attrs.get("specgrove.guessed"))))
    if not rows:
        return {"rounds": 0}
    med = [statistics.median(col) for col in zip(*rows)]
    return {"rounds": len(rows), "speculative_share": round(len(rows) / total, 3),
            "ahead_share": round(sum(row[9] for row in rows) / len(rows), 3),
            "guessed_share": round(sum(row[10] for row in rows) / len(rows), 3),
            "median_round_ms": round(med[0], 3), "median_draft_ms": round(med[1], 3),
            "median_verify_ms": round(med[2], 3), "median_network_ms": round(med[3], 3),
            "median_overlap_ms": round(med[4], 3), "median_tree_bytes": int(med[5]), "median_tree_size": med[6],
            "median_tree_depth": med[7], "mean_tokens_per_round": round(sum(row[8] for row in rows) / len(rows), 3)}


class GrpcStacks:
    """One local deployment per link delay and draft-ahead setting, started lazily, all stopped
    together."""

    def __init__(self, target: str, draft: str, cache_dir: Path, work_dir: Path, min_pass_ms: float = 0.0,
                 drafter_nice: int = 0, drafter_idle: bool = False, split_cores: bool = False,
                 guess_count: int = GUESS_COUNT, guess_width: int | None = None):
        """min_pass_ms: the verifier's passes last at least this long (a GPU-bound target);
        drafter_nice / drafter_idle: the drafter runs at that niceness / in the idle scheduling
        class; split_cores: the verifier (or the worker) alone on the last core, the drafter and the
        orchestrator on the others, one torch thread each (``start_stack``'s prefixes); guess_count /
        guess_width: the guessing deployments' drafter's --guess-count / --guess-width."""
        self.target, self.draft, self.cache_dir, self.work_dir = target, draft, cache_dir, work_dir
        self.min_pass_ms, self.split_cores = min_pass_ms, split_cores
        self.guess_count, self.guess_width = guess_count, guess_width
        self.prefixes = {role: () for role in ("verifier", "drafter")}  # the orchestrator: start_stack's nice
        if split_cores:
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) < 2:
                raise ValueError("--split-cores needs at least 2 cores")
            rest = ",".join(str(core) for core in cores[:-1])
            self.prefixes = {"verifier": ("taskset", "-c", str(cores[-1])), "drafter": ("taskset", "-c", rest),
                             "orchestrator": (*CONTROL_NICE, "taskset", "-c", rest)}
        self.prefixes["drafter"] += (("chrt", "--idle", "0") if drafter_idle else ()) + (
            ("nice", "-n", str(drafter_nice)) if drafter_nice else ())
        self.prefixes["worker"] = self.prefixes["verifier"]  # the default deployment's one worker process
        self.stacks: dict[tuple[float, bool], object] = {}

    @staticmethod
    def _name(delay: float, ahead: str) -> str:
        return f"d{delay:g}{'' if ahead == 'ahead' else '-' + ahead}"

    def trace_file(self, delay: float, ahead: str = "ahead") -> Path:
        return self.work_dir / f"trace-{self._name(delay, ahead)}.jsonl"

    def client(self, delay: float, ahead: str = "ahead"):
        from services.roles import start_stack
        from specgrove_apps.client import Client

        if (delay, ahead) not in self.stacks:
            self.trace_file(delay, ahead).unlink(missing_ok=True)
            logs = self.work_dir / f"logs-{self._name(delay, ahead)}"
            logs.mkdir(exist_ok=True)
            self.stacks[delay, ahead] = start_stack(
                0, self.target, self.draft, self.cache_dir, link_delay_ms=delay, log_dir=logs,
                extra_orchestrator=("--stop-policy", "static", *{"serial": ("--no-draft-ahead",),
                                                                 "guess": ("--guess-ahead",)}.get(ahead, ())),
                colocated=ahead == "ahead",
                extra_verifier=("--min-pass-ms", str(self.min_pass_ms)),
                guess_count=self.guess_count, guess_width=self.guess_width, prefixes=self.prefixes,
                env={**os.environ, "SPECGROVE_TRACE_FILE": str(self.trace_file(delay, ahead)),
                     **({"OMP_NUM_THREADS": "1"} if self.split_cores else {})})
        return Client(self.stacks[delay, ahead].address)

    def stop(self) -> None:
        for stack in self.stacks.values():
            stack.stop()
