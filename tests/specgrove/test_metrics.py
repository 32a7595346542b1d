"""The Prometheus metrics: recorded values, the exposition format, and a Grafana dashboard that
only queries series the roles really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from specgrove.metrics import OrchestratorMetrics, WorkerMetrics, exposition

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "specgrove-dashboard.json"


def parse(text: str) -> dict[str, float]:
    """Prometheus exposition text -> {name + JSON labels: value} (the client library's own parser)."""
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def samples(registry) -> dict[str, float]:
    return parse(exposition(registry).decode())


def test_rounds_and_finishes_are_counted_with_vllm_names():
    m = OrchestratorMetrics()
    m.record_round(num_drafted=4, num_accepted=2, num_emitted=3)
    m.record_round(num_drafted=0, num_accepted=0, num_emitted=1)  # a plain step is no draft
    m.record_finish("eos", prompt_tokens=7, elapsed_s=0.5)
    values = samples(m.registry)
    assert values["specgrove:spec_decode_num_drafts_total{}"] == 1
    assert values["specgrove:spec_decode_num_draft_tokens_total{}"] == 4
    assert values["specgrove:spec_decode_num_accepted_tokens_total{}"] == 2
    assert values['specgrove:spec_decode_num_accepted_tokens_per_pos_total{"position": "0"}'] == 1
    assert values['specgrove:spec_decode_num_accepted_tokens_per_pos_total{"position": "1"}'] == 1
    assert values["specgrove:generation_tokens_total{}"] == 4
    assert values["specgrove:spec_decode_tokens_per_round_count{}"] == 2
    assert values['specgrove:request_success_total{"finished_reason": "eos"}'] == 1
    assert values["specgrove:prompt_tokens_total{}"] == 7


def test_worker_cache_usage_is_a_fraction_of_its_sessions():
    m = WorkerMetrics("verify", max_sessions=8)
    m.record_pass(tokens=9, seconds=0.05)
    m.record_cache(sessions=2, tokens=300)
    values = samples(m.registry)
    assert values["specgrove:kv_cache_usage_perc{}"] == 0.25
    assert values["specgrove:kv_cache_tokens{}"] == 300
    assert values["specgrove:verify_tokens_per_pass_sum{}"] == 9


def test_the_grafana_dashboard_queries_only_exported_series():
    exported = set()
    for registry in (OrchestratorMetrics().registry, WorkerMetrics("verify", 1).registry,
                     WorkerMetrics("draft", 1).registry):
        for family in registry.collect():
            base = family.name + ("_total" if family.type == "counter" else "")
            exported |= {base, f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"specgrove:[a-z_]+", target["expr"])}
    assert len(dashboard["panels"]) >= 10 and queried
    assert queried <= exported, queried - exported


def test_scrape_reads_one_series_from_a_served_metrics_endpoint():
    from specgrove.metrics import scrape, serve_metrics

    m = OrchestratorMetrics()
    m.record_round(num_drafted=4, num_accepted=2, num_emitted=3, plan="plan")
    m.record_round(num_drafted=0, num_accepted=0, num_emitted=1, plan="load")
    server, port = serve_metrics(m.registry, "127.0.0.1", 0)
    try:
        rounds = scrape(f"http://127.0.0.1:{port}/metrics", "specgrove:rounds_total")
    finally:
        server.shutdown()
    assert sorted((labels["plan"], labels["drafted"], value) for labels, value in rounds) == [
        ("load", "false", 1.0), ("plan", "true", 1.0)]
