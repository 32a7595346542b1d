"""The GPU check's dry run: the same script on the CPU with a tiny shape and the tiny model."""

import json

from specgrove_apps import gpu_check


def test_the_dry_run_writes_cost_curves_served_results_and_a_plot(tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--dry-run", "--target", str(tiny_dir), "--draft", "ngram",
                           "--workloads", "chat", "--num-prompts", "1", "--max-new-tokens", "8",
                           "--concurrency", "2", "--cache-dir", str(tmp_path / "cache")]) == 0
    report = json.loads((out / "gpu-check.json").read_text())
    tiny = report["cost"]["shapes"]["tiny"]
    assert report["cost"]["copy_bandwidth_gbs"] > 0 and tiny["floor_ms"] > 0
    assert set(tiny["passes_ms"]) == {"1", "2"} and all(ms > 0 for per_n in tiny["passes_ms"].values()
                                                         for ms in per_n.values())
    results = {r["mode"]: r for r in report["served"]["chat"]["results"]}
    assert set(results) == {"ar", "specgrove-ar", "chain-auto", "grpc-chain-auto"}
    assert all(r["greedy_matches_ar"] for r in results.values())
    assert {r["concurrency"] for r in report["served"]["chat"]["concurrency"]} == {2}
    assert (out / "gpu-cost.png").stat().st_size > 0
