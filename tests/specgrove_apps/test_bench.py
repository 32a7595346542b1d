"""Benchmark arithmetic, the JSON report schema, and a --quick run end to end."""

import json
import subprocess
import sys
from importlib.resources import files

import jsonschema
import pytest

from specgrove.errors import InvalidArgument
from specgrove.workloads import chat_prompts, humaneval_prompts
from specgrove_apps.bench import BenchConfig
from specgrove_apps.bench_metrics import Sample, add_ratios, greedy_agreement, per_position_acceptance, summarise

SCHEMA = json.loads(files("specgrove.data").joinpath("bench.schema.json").read_text())


def test_per_position_acceptance_follows_vllm_definition():
    # 4 rounds drafting 3 tokens; accepted 3, 1, 0, 2 -> positions reached: >=1: 3 rounds, >=2: 2, >=3: 1
    assert per_position_acceptance([3, 3, 3, 3], [3, 1, 0, 2]) == [0.75, 0.5, 0.25]
    assert per_position_acceptance([0, 0], [0, 0]) == []  # no drafts, no rates


def test_summarise_and_ratios():
    ar = [Sample("a", [1] * 10, elapsed_s=2.0, ttft_s=0.2), Sample("b", [1] * 30, elapsed_s=2.0, ttft_s=0.2)]
    chain = [
        Sample("a", [1] * 10, elapsed_s=1.0, ttft_s=0.1, drafted=[4, 4, 4], accepted=[4, 2, 1]),
        Sample("b", [1] * 30, elapsed_s=1.0, ttft_s=0.1, drafted=[4, 0], accepted=[3, 0]),
    ]
    records = add_ratios([summarise("ar", ar, False), summarise("chain-k4", chain, True)])
    base, spec = records
    assert base["output_throughput"] == 10.0  # 40 tokens / 4 s
    assert spec["output_throughput"] == 20.0
    assert spec["speedup_vs_ar"] == 2.0 and base["speedup_vs_ar"] == 1.0
    assert spec["spec_decode_num_drafts"] == 4  # the round with 0 drafted tokens is no draft
    assert spec["spec_decode_num_draft_tokens"] == 16 and spec["spec_decode_num_accepted_tokens"] == 10
    assert spec["spec_decode_acceptance_length"] == pytest.approx(1 + 10 / 4)  # vLLM's: per drafting round
    assert spec["tokens_per_round"] == pytest.approx((10 + 5) / 5)  # 5 verify passes, the K = 0 one too
    assert spec["spec_decode_acceptance_rate"] == pytest.approx(10 / 16)
    assert spec["median_tpot_ms"] == pytest.approx(1000 * statistics_median([0.9 / 9, 0.9 / 29]), abs=1e-3)
    assert base["spec_decode_acceptance_length"] is None


def statistics_median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def test_ratios_without_baseline_are_none():
    records = add_ratios([summarise("chain-k4", [Sample("a", [1, 2], 1.0, 0.5, [1], [1])], True)])
    assert records[0]["speedup_vs_ar"] is None


def test_greedy_agreement_counts_identical_prompts():
    base = [Sample("a", [1, 2], 1, 0), Sample("b", [3], 1, 0)]
    other = [Sample("a", [1, 2], 1, 0), Sample("b", [4], 1, 0)]
    assert greedy_agreement({"ar": base, "chain-k2": other}) == {"ar": 1.0, "chain-k2": 0.5}


def test_schema_accepts_a_report_and_rejects_a_broken_one():
    record = add_ratios([summarise("ar", [Sample("a", [1, 2, 3], 1.0, 0.1)], False)])[0]
    record["greedy_matches_ar"] = 1.0
    config = {"workload": "humaneval", "num_prompts": 1, "max_new_tokens": 3, "temperature": 0.0, "seed": 0,
              "target": "smollm2", "draft": "ngram", "date": "today", "torch_version": "2.13.0"}
    report = {"config": config, "results": [record]}
    jsonschema.validate(report, SCHEMA)
    del record["output_throughput"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, SCHEMA)


def test_unknown_mode_is_refused():
    with pytest.raises(InvalidArgument, match="modes: unknown modes"):
        BenchConfig(modes=("warp-speed",)).mode_names()


def test_grpc_mode_names_carry_the_speculation_the_link_delay_and_the_deployment():
    from specgrove_apps.bench_grpc import grpc_mode_names, parse_mode

    names = grpc_mode_names((4,), True, (8,), (0.0, 20.0), chain_auto=True, serial=True)
    assert names[:4] == ["grpc-chain-k4", "grpc-chain-k4-serial", "grpc-chain-auto", "grpc-chain-auto-serial"]
    assert "grpc-tree-m8-d20-serial" in names and len(names) == 16
    assert parse_mode("grpc-tree-m8-d20-serial") == ({"mode": "tree", "tree_budget": 8}, 20.0, "serial")
    assert parse_mode("grpc-chain-k4-d5") == ({"mode": "chain", "draft_len": 4}, 5.0, "ahead")
    assert parse_mode("grpc-chain-k4-d20-guess") == ({"mode": "chain", "draft_len": 4}, 20.0, "guess")
    assert parse_mode("grpc-chain-auto") == ({"mode": "chain"}, 0.0, "ahead")
    assert grpc_mode_names((4,), False, (), (20.0,), serial=True, guess=True, split=True) == [
        "grpc-chain-k4-d20", "grpc-chain-k4-d20-split", "grpc-chain-k4-d20-guess", "grpc-chain-k4-d20-serial"]
    assert parse_mode("grpc-chain-auto-split") == ({"mode": "chain"}, 0.0, "split")
    assert BenchConfig(grpc_chain_lens=(4,), grpc_serial=True, draft_lens=(4,)).mode_names()[-2:] == [
        "grpc-chain-k4", "grpc-chain-k4-serial"]


def test_workloads_load():
    humaneval = humaneval_prompts(3)
    assert [p.name for p in humaneval] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(p.text.lstrip().startswith(("from", "def", "import")) and not p.chat for p in humaneval)
    assert len(chat_prompts(100)) == 12 and all(p.chat for p in chat_prompts(2))


def test_the_json_workload_carries_schemas_and_structured_runs_only_specgrove_modes():
    from specgrove.grammar import GrammarSpec
    from specgrove.workloads import load_workload

    prompts = load_workload("json", 3)
    assert len(prompts) == 3 and all(p.chat and p.schema for p in prompts)
    GrammarSpec.json_schema(prompts[0].schema).validate()  # the schema compiles
    modes = BenchConfig(workload="json", structured=True, draft_lens=(4,)).mode_names()
    assert modes == ["specgrove-ar", "chain-k4"]  # transformers' generate takes no grammar


@pytest.mark.slow
def test_quick_bench_runs_end_to_end(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    subprocess.run(
        [sys.executable, "-m", "specgrove_apps.cli", "bench", "--quick", "--no-progress", "--json", str(out), "--plot", str(png),
         "--concurrency", "2"],
        check=True, timeout=300,
    )
    report = json.loads(out.read_text())
    jsonschema.validate(report, SCHEMA)
    modes = [r["mode"] for r in report["results"]]
    assert modes == ["ar", "hf-assisted", "hf-lookup", "specgrove-ar", "chain-k4", "grpc-chain-k4"]
    by_mode = {r["mode"]: r for r in report["results"]}
    assert by_mode["ar"]["speedup_vs_ar"] == 1.0
    # greedy: every mode emits exactly the target's own greedy tokens
    assert all(r["greedy_matches_ar"] == 1.0 for r in report["results"])
    assert by_mode["chain-k4"]["spec_decode_acceptance_length"] >= 1.0
    # the same chain through the local deployment (processes, gRPC, Redis), split from its traces;
    # the default deployment's drafter verifies on the verifier in its own process: no tree on a wire
    grpc_mode = by_mode["grpc-chain-k4"]
    assert grpc_mode["throughput_vs_in_process"] > 0 and grpc_mode["colocated"] is True
    split = grpc_mode["round_split"]
    assert split["rounds"] > 0 and split["median_tree_bytes"] == 0
    assert split["median_verify_ms"] > 0 and split["median_round_ms"] >= split["median_verify_ms"]
    assert split["median_tree_size"] >= 1 and split["median_tree_depth"] >= 1 and 0 < split["speculative_share"] <= 1
    assert 1 <= split["mean_tokens_per_round"] <= 5  # a round of K = 4 emits 1 .. 5 tokens
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # under load: every SpecGrove mode and transformers' padded batches, 2 clients at once
    load = {(r["mode"], r["concurrency"]): r for r in report["concurrency"]}
    assert set(load) == {(m, 2) for m in ("hf-batch", "specgrove-ar", "chain-k4", "grpc-chain-k4")}
    assert all(r["completed"] == 2 and r["output_throughput"] > 0 for r in load.values())
    assert load[("specgrove-ar", 2)]["throughput_vs_batched_ar"] == 1.0
    assert 0 <= report["config"]["other_processes_cpu_share"]


def test_transformers_padded_batches_give_each_prompt_its_own_greedy_output(tiny_target):
    from orchestrator.engine import SpeculativeEngine
    from specgrove.sampling import SamplingParams
    from specgrove_apps.bench import hf_batch_samples

    prompts = [tiny_target.encode(t) for t in ("my name is", "a", "the cat sat on the")]  # different lengths
    params = [SamplingParams(max_new_tokens=12)] * 3
    samples = hf_batch_samples(tiny_target, prompts, params, batch=2)  # a batch of 2, then one of 1
    plain = SpeculativeEngine(tiny_target)
    assert [s.token_ids for s in samples] == [plain.generate(p, params[0]).token_ids for p in prompts]
    assert all(0 < s.ttft_s <= s.elapsed_s for s in samples)


def test_a_load_record_divides_every_token_by_the_wall_time():
    from specgrove_apps.bench_metrics import summarise_concurrent

    samples = [Sample(str(i), [1] * 10, elapsed_s=1.0, ttft_s=0.1 * (i + 1)) for i in range(4)]
    record = summarise_concurrent("grpc-chain-k4", 4, samples, wall_s=2.0)  # 4 clients overlapped: 2 s in all
    assert record["output_throughput"] == 20.0  # 40 tokens / 2 s, not / the 4 s of summed latencies
    assert record["p50_ttft_ms"] == 300.0 and record["p99_ttft_ms"] == 400.0
    assert record["concurrency"] == 4 and record["completed"] == 4
    assert "drafting_share" not in record  # plain generations have no rounds to report


def test_a_load_record_says_what_its_rounds_drafted():
    from specgrove_apps.bench_metrics import summarise_concurrent

    samples = [Sample("a", [1] * 7, 1.0, 0.1, drafted=[0, 4, 0, 2], accepted=[0, 3, 0, 0]),
               Sample("b", [1] * 3, 1.0, 0.1, drafted=[0, 0, 0], accepted=[0, 0, 0])]
    record = summarise_concurrent("chain-auto", 2, samples, wall_s=1.0)
    assert record["rounds"] == 7 and record["drafting_share"] == round(2 / 7, 4)
    assert record["mean_draft_len"] == round(6 / 7, 4)
    assert record["spec_decode_acceptance_length"] == 2.5  # 1 + 3 accepted over the 2 rounds that drafted


def test_split_cores_put_the_verifier_alone_on_its_own_core(tmp_path):
    """bench --split-cores: the verifier (or the worker) on the last core, the drafter and the orchestrator on the
    others (a drafter's niceness still applies), in every deployment alike."""
    import os

    import pytest

    from specgrove_apps.bench_grpc import GrpcStacks

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        with pytest.raises(ValueError, match="2 cores"):
            GrpcStacks("t", "d", tmp_path, tmp_path, split_cores=True)
        return
    stacks = GrpcStacks("t", "d", tmp_path, tmp_path, split_cores=True, drafter_nice=19)
    assert stacks.prefixes["verifier"] == ("taskset", "-c", str(cores[-1]))
    rest = ",".join(map(str, cores[:-1]))
    assert stacks.prefixes["orchestrator"] == ("nice", "-n", "19", "taskset", "-c", rest)
    assert stacks.prefixes["drafter"] == ("taskset", "-c", rest, "nice", "-n", "19")
    assert stacks.prefixes["worker"] == stacks.prefixes["verifier"]  # the default deployment's worker process
    # the orchestrator's default (start_stack's nice) stands
    assert GrpcStacks("t", "d", tmp_path, tmp_path).prefixes == {"verifier": (), "drafter": (), "worker": ()}
