"""``specgrove bench``: decoding modes side by side on one workload, in the same run.

Modes: ``ar`` (transformers ``generate`` of the target: the baseline), ``hf-assisted``
(transformers assisted generation with the same draft: prompt lookup for the n-gram draft,
``assistant_model`` for a model draft; for a feature draft, which transformers cannot run, the
shipped independent draft), ``hf-lookup`` (transformers prompt lookup, with a model draft),
``specgrove-ar`` (our engine with K = 0) and
``chain-kK`` (our chain speculative sampling with draft length K). Prompts are interleaved across
modes (prompt by prompt) so machine drift hits every mode alike; a warm-up generation per mode
is excluded. Metric names follow vLLM's benchmark output where one exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from specgrove.compute import on_compute
from specgrove.config import GUESS_COUNT
from specgrove.errors import InvalidArgument
from specgrove.grammar import GrammarSpec
from specgrove.sampling import SamplingParams
from specgrove_apps.bench_grpc import RATIOS, GrpcStacks, grpc_mode_names, grpc_runner, parse_mode, round_split
from specgrove_apps.bench_metrics import Sample, add_ratios, greedy_agreement, summarise


# --- mode runners ------------------------------------------------------------------------------

Runner = Callable[[list[int], SamplingParams], Sample]


def engine_runner(engine) -> Runner:
    def run(prompt_ids: list[int], params: SamplingParams) -> Sample:
        result = engine.generate(prompt_ids, params)
        return Sample(
            "", result.token_ids, result.elapsed_s, result.ttft_s,
            [r.num_drafted for r in result.rounds], [r.num_accepted for r in result.rounds],
            [r.lam for r in result.rounds if r.lam is not None],
        )

    return run


def hf_sampling(params: SamplingParams) -> dict:
    """transformers ``generate``'s sampling arguments for our params."""
    if params.greedy:
        return dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    # top_k=0 disables transformers' default top-k of 50, so both sample the same distribution
    return dict(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)


def hf_runner(model, **assist) -> Runner:
    """transformers generate on the target; assist = prompt_lookup_num_tokens=K or assistant_model=M."""
    from transformers.generation.streamers import BaseStreamer

    class FirstTokenClock(BaseStreamer):
        def __init__(self):
            self.calls = 0
            self.first: float | None = None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:  # call 1 is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    def run(prompt_ids: list[int], params: SamplingParams) -> Sample:
        if params.seed is not None:
            torch.manual_seed(params.seed)  # transformers samples from the global generator
        sampling = hf_sampling(params)
        clock = FirstTokenClock()
        eos = sorted(model.eos_token_ids)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.model.generate(
                torch.tensor([prompt_ids], device=model.model.device), max_new_tokens=params.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=eos[0], streamer=clock, **sampling, **assist,
            )
        elapsed = time.perf_counter() - start
        return Sample("", out[0, len(prompt_ids):].tolist(), elapsed, (clock.first or start + elapsed) - start)

    return lambda prompt_ids, params: on_compute(run, prompt_ids, params)  # the thread our workers' passes use


def hf_batch_samples(model, prompts: list[list[int]], params: list[SamplingParams], batch: int) -> list[Sample]:
    """transformers ``generate`` over left-padded batches of ``batch`` prompts, in order (static
    batching: a batch ends when its longest output does). A sample's times run from its batch's
    start; its tokens stop at its first EOS."""
    eos = sorted(model.eos_token_ids)
    samples = []
    for first in range(0, len(prompts), batch):
        group, group_params = prompts[first:first + batch], params[first:first + batch]
        width = max(map(len, group))
        ids = torch.tensor([[eos[0]] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        p0 = group_params[0]
        sampling = hf_sampling(p0)
        if p0.seed is not None:
            torch.manual_seed(p0.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            first_step = model.model.generate(ids.to(model.model.device), attention_mask=mask.to(model.model.device),
                                              max_new_tokens=1, eos_token_id=eos, pad_token_id=eos[0], **sampling)
            ttft = time.perf_counter() - start
            out = model.model.generate(ids.to(model.model.device), attention_mask=mask.to(model.model.device),
                                       max_new_tokens=p0.max_new_tokens, eos_token_id=eos, pad_token_id=eos[0],
                                       **sampling) if p0.max_new_tokens > 1 else first_step
        elapsed = time.perf_counter() - start - ttft  # the one-token run only measured the first token
        for row in out[:, width:].tolist():
            ends = [i for i, t in enumerate(row) if t in model.eos_token_ids]
            samples.append(Sample("", row[: ends[0] + 1] if ends else row, max(elapsed, ttft), ttft))
    return samples


def other_cpu_seconds() -> float | None:
    """CPU seconds every process on this machine but this one and its children (the gRPC
    deployment's workers) has used since boot (Linux; None elsewhere): what the bench compares
    before and after a run to see whether the machine was quiet."""
    import os
    from pathlib import Path

    try:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
        parents, times = {}, {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                rest = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            pid = int(stat.parent.name)
            parents[pid], times[pid] = int(rest[1]), (int(rest[11]) + int(rest[12])) / tick
        ours = {os.getpid()}
        for _ in range(4):  # children, grandchildren...
            ours |= {pid for pid, parent in parents.items() if parent in ours}
        return busy - sum(times.get(pid, 0.0) for pid in ours)
    except (OSError, ValueError, IndexError):
        return None


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    workload: str = "humaneval"  # humaneval | chat
    num_prompts: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0  # prompt i is generated with seed + i in every sampled mode
    target: str = "smollm2"
    draft: str = "ngram"  # 'ngram' or a model directory
    draft_lens: tuple[int, ...] = (2, 4, 6)
    tree_budgets: tuple[int, ...] = ()  # tree modes with a pinned size (model drafts only)
    tree_auto: bool = False  # a tree mode sized by the planner from the calibration profile
    chain_auto: bool = False  # a chain mode whose K (0 .. max draft_lens) the goodput planner picks per round
    stop_policies: tuple[str, ...] = ()  # chain-<policy> modes with at most policy_max_len tokens
    policy_max_len: int = 8
    hf_assisted_len: int = 4  # tokens per assisted step for hf-assisted
    hf_lookup_lens: tuple[int, ...] = ()  # hf-lookup-kK modes: transformers' prompt lookup with K tokens
    modes: tuple[str, ...] = ()  # empty = every mode
    grpc_chain_lens: tuple[int, ...] = ()  # grpc-chain-kK modes through a local deployment
    grpc_tree: bool = False  # a grpc-tree mode sized by the network-aware planner
    grpc_chain_auto: bool = False  # grpc-chain-auto: the served default (K picked by goodput)
    grpc_tree_budgets: tuple[int, ...] = ()  # grpc-tree-mM modes (pinned size)
    grpc_serial: bool = False  # every gRPC mode also without draft-ahead (-serial: rounds drawn when asked)
    grpc_guess: bool = False  # every gRPC mode also with guessed draft-ahead (-guess)
    grpc_split: bool = False  # every gRPC mode also on separate drafter and verifier processes (-split)
    link_delays: tuple[float, ...] = (0.0,)  # a remote drafter's one-way link latency (ms), one deployment each
    min_pass_ms: float = 0.0  # the deployments' verifier passes last at least this long (a GPU-bound target)
    drafter_nice: int = 0  # the deployments' drafter runs at this niceness (a drafter that never slows the verifier)
    drafter_idle: bool = False  # ... or in the idle scheduling class (SCHED_IDLE: only when nothing else runs)
    split_cores: bool = False  # the verifier alone on one core, drafter + orchestrator on the other(s), 1 thread each
    guess_count: int = GUESS_COUNT  # -guess modes: guesses per round, the most likely verdicts (the drafter's --guess-count)
    guess_width: int | None = None  # -guess modes: instead, this many per acceptance length (--guess-width)
    structured: bool = False  # constrain each answer by its prompt's JSON schema (json workload; SpecGrove modes)
    concurrency: tuple[int, ...] = ()  # every SpecGrove mode again with this many clients at once, beside
    # transformers' generate over padded batches of as many prompts (aggregate throughput)
    llama_cpp: str | None = None  # a llama.cpp build (llama-bench or its folder): its plain decoding beside us

    def mode_names(self) -> list[str]:
        every = ["ar", "hf-assisted"] + (["hf-lookup"] if self.draft != "ngram" else [])
        every += [f"hf-lookup-k{k}" for k in self.hf_lookup_lens] + ["specgrove-ar"]
        if self.structured:  # transformers' generate takes no grammar: constrained plain decoding is the baseline
            every = ["specgrove-ar"]
        every += [f"chain-k{k}" for k in self.draft_lens] + (["chain-auto"] if self.chain_auto else [])
        every += [f"chain-{p}" for p in self.stop_policies]
        every += [f"tree-m{m}" for m in self.tree_budgets] + (["tree-auto"] if self.tree_auto else [])
        every += grpc_mode_names(self.grpc_chain_lens, self.grpc_tree, self.grpc_tree_budgets, self.link_delays,
                                 self.grpc_chain_auto, self.grpc_serial, self.grpc_guess, self.grpc_split)
        unknown = set(self.modes) - set(every)
        if unknown:
            raise InvalidArgument("modes", f"unknown modes {sorted(unknown)}; available: {', '.join(every)}")
        return [m for m in every if not self.modes or m in self.modes]


def build_runners(config: BenchConfig, cache_dir, stacks=None, sessions=None) -> tuple[object, dict[str, tuple[Runner, bool]]]:
    """Load the models once and make one runner per mode: name -> (runner, is speculative)."""
    from specgrove_apps.assemble import EngineSpec, assemble
    from specgrove.models import load_model

    loaded: dict = {}  # every mode shares the loaded target (and draft)
    target = load_model(config.target, cache_dir, loaded)
    from pathlib import Path

    from drafter.factory import SHIPPED_FEATURE_NAME, model_spec
    from drafter.feature_model import is_feature_draft
    from specgrove.config import SHIPPED_FEATURE_DRAFT
    from specgrove.models import SHIPPED_DRAFT_NAME

    lookup = dict(prompt_lookup_num_tokens=config.hf_assisted_len)
    assistant = model_spec(config.draft)
    if assistant is not None and is_feature_draft(SHIPPED_FEATURE_DRAFT if assistant == SHIPPED_FEATURE_NAME
                                                  else Path(assistant).expanduser()):
        assistant = SHIPPED_DRAFT_NAME  # transformers cannot run a feature head: its best independent draft
    # transformers assists with the draft model (it has no lookup-then-model combination)
    assist = lookup if assistant is None else dict(assistant_model=load_model(assistant, cache_dir, loaded).model)
    specs = {"specgrove-ar": EngineSpec(mode="ar", target=config.target)}
    for k in config.draft_lens:
        specs[f"chain-k{k}"] = EngineSpec(mode="chain", target=config.target, draft=config.draft, draft_len=k,
                                          stop_policy="static")
    if config.chain_auto:
        specs["chain-auto"] = EngineSpec(mode="chain", target=config.target, draft=config.draft,
                                         draft_len=max(config.draft_lens, default=4), adaptive=True,
                                         stop_policy="static")
    for policy in config.stop_policies:
        specs[f"chain-{policy}"] = EngineSpec(mode="chain", target=config.target, draft=config.draft,
                                              draft_len=config.policy_max_len, stop_policy=policy)
    for m in config.tree_budgets:
        specs[f"tree-m{m}"] = EngineSpec(mode="tree", target=config.target, draft=config.draft, tree_budget=m,
                                         greedy=config.temperature == 0, stop_policy="static")
    if config.tree_auto:
        specs["tree-auto"] = EngineSpec(mode="tree", target=config.target, draft=config.draft,
                                        greedy=config.temperature == 0, stop_policy="static")
    runners: dict[str, tuple[Runner, bool]] = {"ar": (hf_runner(target), False), "hf-assisted": (hf_runner(target, **assist), False),
                                               "hf-lookup": (hf_runner(target, **lookup), False)}
    for k in config.hf_lookup_lens:
        runners[f"hf-lookup-k{k}"] = (hf_runner(target, prompt_lookup_num_tokens=k), False)
    for name in config.mode_names():
        if name in specs:
            built = assemble(specs[name], cache_dir, loaded)
            runners[name] = (engine_runner(built.engine), True)
        elif name.startswith("grpc-"):
            spec, delay, ahead = parse_mode(name)
            sessions[name] = set()
            runners[name] = (grpc_runner(stacks.client(delay, ahead), spec, sessions[name]), True)
    return target, {name: runners[name] for name in config.mode_names()}


def run_bench(config: BenchConfig, cache_dir, progress: bool = True) -> dict:
    import tempfile
    from pathlib import Path

    stacks = GrpcStacks(config.target, config.draft, cache_dir, Path(tempfile.mkdtemp(prefix="specgrove-bench-")),
                        config.min_pass_ms, config.drafter_nice, config.drafter_idle, config.split_cores,
                        config.guess_count, config.guess_width)
    sessions: dict[str, set[str]] = {}
    others, wall = other_cpu_seconds(), time.perf_counter()
    try:
        target, runners = build_runners(config, cache_dir, stacks, sessions)
        report = _run(config, target, runners, progress)
        if config.concurrency:
            report["concurrency"] = _run_concurrent(config, target, runners)
        others_after = other_cpu_seconds()  # while the deployment's workers still count as ours
        if config.llama_cpp:
            report["llama_cpp"] = _llama_cpp(config, target, report)
    finally:
        stacks.stop()
    if others is not None and others_after is not None:
        share = (others_after - others) / (time.perf_counter() - wall) / max(1, torch.get_num_threads())
        share = max(0.0, share)  # the kernel's totals and per-process ticks round apart: a quiet run reads ~ −0.001
        report["config"]["other_processes_cpu_share"] = round(share, 3)
        if share > 0.1:
            report["config"]["warning"] = (f"the machine was not quiet: other processes took {share:.0%} of the "
                                           "CPU this run used; its ratios are unreliable")
    by_mode = {r["mode"]: r for r in report["results"]}
    for name, ids in sessions.items():
        spec, delay, ahead = parse_mode(name)
        record = by_mode[name]
        record["link_delay_ms"], record["draft_ahead"] = delay, ahead != "serial"
        record["guess_ahead"] = ahead == "guess"
        record["round_split"] = round_split(stacks.trace_file(delay, ahead), ids)
        base = name.removesuffix("-" + ahead) if ahead != "ahead" else name
        record["colocated"] = ahead == "ahead"
        for variant, key in RATIOS[ahead].items():
            other = by_mode.get(f"{base}-{variant}")
            if other and other["output_throughput"]:
                record[key] = round(record["output_throughput"] / other["output_throughput"], 4)
        twin = by_mode.get(f"chain-k{spec['draft_len']}") if "draft_len" in spec else None  # grpc-chain-auto: none
        if twin and twin["output_throughput"]:
            record["throughput_vs_in_process"] = round(record["output_throughput"] / twin["output_throughput"], 4)
    return report


def _run(config: BenchConfig, target, runners, progress: bool) -> dict:
    from tqdm import tqdm

    from specgrove.workloads import load_workload

    prompts = load_workload(config.workload, config.num_prompts)
    encoded = [target.chat_prompt(p.text) if p.chat else target.encode(p.text) for p in prompts]

    def params_for(i: int, max_new_tokens: int) -> SamplingParams:
        schema = prompts[i].schema if config.structured else None
        if config.structured and schema is None:
            raise InvalidArgument("structured", f"the {config.workload} workload has no schemas; use --workload json")
        return SamplingParams(temperature=config.temperature, seed=config.seed + i, max_new_tokens=max_new_tokens,
                              grammar=GrammarSpec.json_schema(schema) if schema else None)

    for runner, _ in runners.values():  # warm-up, excluded from timing
        runner(encoded[0], params_for(0, 8))
    samples: dict[str, list[Sample]] = {name: [] for name in runners}
    bar = tqdm(total=len(prompts) * len(runners), desc="bench", unit="gen", disable=not progress)
    for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
        for name, (runner, _) in runners.items():
            sample = runner(ids, params_for(i, config.max_new_tokens))
            sample.prompt = prompt.name
            samples[name].append(sample)
            bar.set_postfix_str(f"{name} {len(sample.token_ids) / sample.elapsed_s:.1f} tok/s")
            bar.update()
    bar.close()
    baseline = "specgrove-ar" if config.structured else "ar"  # structured: constrained plain decoding
    records = add_ratios([summarise(name, samples[name], spec) for name, (_, spec) in runners.items()], baseline)
    agreement = greedy_agreement(samples, baseline)
    for record in records:
        record["greedy_matches_ar"] = agreement.get(record["mode"]) if config.temperature == 0 else None
    return {"config": _config_record(config, target), "results": records}


def _run_concurrent(config: BenchConfig, target, runners) -> list[dict]:
    """Every SpecGrove mode (in process and gRPC) with c clients at once, for each c: the whole
    workload, the prompts taken in order by whichever client is free; aggregate tokens/s over the
    wall time. Beside them, ``hf-batch``: transformers' generate over padded batches of c prompts.
    ``specgrove-ar`` at c clients is batched plain decoding: the baseline of the other modes."""
    from concurrent.futures import ThreadPoolExecutor

    from specgrove.workloads import load_workload
    from specgrove_apps.bench_metrics import summarise_concurrent

    prompts = load_workload(config.workload, config.num_prompts)
    encoded = [target.chat_prompt(p.text) if p.chat else target.encode(p.text) for p in prompts]
    params = [SamplingParams(temperature=config.temperature, seed=config.seed + i,
                             max_new_tokens=config.max_new_tokens) for i in range(len(encoded))]
    records = []
    for c in config.concurrency:  # every mode at one concurrency, then the next: drift hits all alike
        start = time.perf_counter()
        samples = on_compute(hf_batch_samples, target, encoded, params, c)
        records.append(summarise_concurrent("hf-batch", c, samples, time.perf_counter() - start))
        for name, (runner, speculative) in runners.items():
            if name in ("ar", "hf-assisted") or name.startswith("hf-lookup"):  # transformers: one request at a time
                continue
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=c) as pool:
                samples = list(pool.map(runner, encoded, params))
            records.append(summarise_concurrent(name, c, samples, time.perf_counter() - start))
    for record in records:  # against the same mode with one client, and batched plain decoding
        def rate(mode: str) -> float | None:
            same = next((r for r in records if r["mode"] == mode and r["concurrency"] == record["concurrency"]), None)
            return same["output_throughput"] if same else None

        one = next((r for r in records if r["mode"] == record["mode"] and r["concurrency"] == 1), None)
        record["throughput_vs_one_client"] = (round(record["output_throughput"] / one["output_throughput"], 4)
                                              if one and one["output_throughput"] else None)
        plain = rate("specgrove-ar")
        record["throughput_vs_batched_ar"] = round(record["output_throughput"] / plain, 4) if plain else None
    return records


def _llama_cpp(config: BenchConfig, target, report: dict) -> dict:
    """llama.cpp's plain decoding at the workload's mean prompt length, and each mode against it."""
    from pathlib import Path

    from specgrove.workloads import load_workload
    from specgrove_apps.llama_cpp import plain_decoding

    prompts = load_workload(config.workload, config.num_prompts)
    lengths = [len(target.chat_prompt(p.text) if p.chat else target.encode(p.text)) for p in prompts]
    result = plain_decoding(Path(config.llama_cpp), config.max_new_tokens, round(sum(lengths) / len(lengths)),
                            torch.get_num_threads())
    for record in report["results"]:
        record["vs_llama_cpp"] = round(record["output_throughput"] / result["tokens_per_s"], 4)
    return result


def _config_record(config: BenchConfig, target) -> dict:
    import os
    import platform

    from specgrove import __version__

    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}
    record.update(
        target_name=target.name,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        specgrove_version=__version__,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        baseline="specgrove-ar" if config.structured else "ar",  # what speedup_vs_ar divides by
    )
    return record


def format_concurrency(report: dict) -> str:
    """The load table: aggregate tokens/s and latency percentiles per gRPC mode and client count."""
    lines = [f"{'mode':22s} {'clients':>7s} {'tok/s':>8s} {'x one':>6s} {'x b-ar':>6s} {'TTFT p50/p99 ms':>17s} "
             f"{'TPOT p50/p99 ms':>17s}"]
    for r in report.get("concurrency", []):
        ratio = f"{r['throughput_vs_one_client']:.2f}" if r["throughput_vs_one_client"] else "-"
        plain = f"{r['throughput_vs_batched_ar']:.2f}" if r.get("throughput_vs_batched_ar") else "-"
        lines.append(f"{r['mode']:22s} {r['concurrency']:7d} {r['output_throughput']:8.2f} {ratio:>6s} {plain:>6s} "
                     f"{r['p50_ttft_ms']:8.0f}/{r['p99_ttft_ms']:<8.0f} {r['p50_tpot_ms']:8.1f}/{r['p99_tpot_ms']:<8.1f}")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    head = f"{'mode':14s} {'tok/s':>8s} {'vs ar':>6s} {'TPOT ms':>8s} {'TTFT ms':>8s} {'acc.len':>7s} {'acc.rate':>8s} {'=ar':>5s}"
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        def fmt(value, spec):
            return format(value, spec) if value is not None else format("-", ">" + spec.split(".")[0])
        lines.append(
            f"{r['mode']:14s} {r['output_throughput']:8.2f} {fmt(r['speedup_vs_ar'], '6.2f')} "
            f"{r['median_tpot_ms']:8.1f} {r['median_ttft_ms']:8.1f} {fmt(r['spec_decode_acceptance_length'], '7.2f')} "
            f"{fmt(r['spec_decode_acceptance_rate'], '8.2f')} {fmt(r['greedy_matches_ar'], '5.2f')}"
        )
    if report.get("llama_cpp"):
        ours = {r["mode"]: r["output_throughput"] for r in report["results"]}
        rate = report["llama_cpp"]["tokens_per_s"]
        lines.append(f"{'llama.cpp':14s} {rate:8.2f}  (plain decoding of the GGUF; "
                     + ", ".join(f"{m} x{t / rate:.2f}" for m, t in ours.items()) + ")")
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    """PNG: output throughput per mode, and per-position acceptance of the speculative modes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar([r["mode"] for r in results], [r["output_throughput"] for r in results], color="tab:green")
    left.set_ylabel("output tokens / s")
    left.set_title(f"{report['config']['workload']}, T = {report['config']['temperature']}")
    left.tick_params(axis="x", rotation=30)
    for r in results:
        rates = r.get("spec_decode_per_position_acceptance_rates")
        if rates:
            right.plot(range(1, len(rates) + 1), rates, marker="o", label=r["mode"])
    right.set_xlabel("draft position")
    right.set_ylabel("acceptance rate (per draft)")
    right.set_ylim(0, 1)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
