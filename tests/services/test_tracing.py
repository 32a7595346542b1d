"""One trace spans the orchestrator, the drafter and the verifier, linked through gRPC metadata
(the metrics are Prometheus': tests/services/test_http.py scrapes them)."""

from __future__ import annotations

import pytest

from drafter.tree_growth import ModelDrafter
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack, in_memory_spans


@pytest.fixture(scope="module")
def traced(tiny_target, redis_server):
    exporter = in_memory_spans()
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
    aheads = [s for s in mine if s.name == "drafter ahead round"]  # draft-ahead: a Draft's next round, run at once
    assert aheads and all(parent(a).name == "drafter Draft" for a in aheads)
    assert len(verifies) == len(drafts) and all(parent(v).name in ("drafter Draft", "drafter ahead round")
                                                for v in verifies)
    assert levels and all(parent(lv).name in ("drafter Draft", "drafter ahead round") for lv in levels)
    ahead_rounds = [r for r in rounds if r.attributes.get("specgrove.ahead")]
    assert len(ahead_rounds) >= len(drafts) - 2  # every round after the first was run ahead (the last may not be)
    attrs = request[0].attributes
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.usage.output_tokens"] == len(out.token_ids)
    assert attrs["gen_ai.request.max_tokens"] == 24
