"""One trace spans the orchestrator, the drafter and the verifier, linked through gRPC metadata
(the metrics are Prometheus': tests/services/test_http.py scrapes them)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from drafter.model_drafter import ModelDrafter
from specgrove import telemetry
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack


@pytest.fixture(scope="module")
def traced(tiny_target, redis_server):
    exporter = InMemorySpanExporter()
    telemetry.setup("specgrove-test", {}, span_exporter=exporter)
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_server.url, mode="chain", draft_len=3)
    try:
        out = Client(stack.address).generate(prompt="my name is", max_new_tokens=24)
    finally:
        stack.stop()
    return out, exporter.get_finished_spans()


def test_one_trace_holds_every_role_with_correct_parents(traced):
    out, spans = traced
    request = [s for s in spans if s.name == "orchestrator Generate"]
    assert len(request) == 1
    trace_id = request[0].context.trace_id
    mine = [s for s in spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in mine}

    def parent(span):
        return by_id[span.parent.span_id]

    rounds = [s for s in mine if s.name == "round"]
    drafts = [s for s in mine if s.name == "drafter Draft"]
    verifies = [s for s in mine if s.name == "verifier Verify"]
    levels = [s for s in mine if s.name == "draft level"]
    assert len(rounds) == out.usage["rounds"]
    assert all(parent(r) is request[0] for r in rounds)
    assert drafts and all(parent(d).name == "round" for d in drafts)
    assert len(verifies) == len(drafts) and all(parent(v).name == "drafter Draft" for v in verifies)
    assert levels and all(parent(lv).name == "drafter Draft" for lv in levels)
    attrs = request[0].attributes
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.usage.output_tokens"] == len(out.token_ids)
    assert attrs["gen_ai.request.max_tokens"] == 24
