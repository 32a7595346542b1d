"""Draft-ahead served over a slow link, on real loopback gRPC and a real Redis: a
drafter runs each round as soon as it holds the last one's verdict, so the orchestrator's hops
(the verdict's way to it, the commit, its request's way back) overlap the next round.

The link is the honest emulation (``LinkDelay``: every message and reply of the drafter's calls
travels D). A round run ahead starts when its predecessor's verdict reaches the drafter, and the
orchestrator's request for it arrives no sooner than 2·D later (the verdict's way to the
orchestrator and the request's way back), so each round taken from draft-ahead reports at least
2·D of overlap: lower bounds only, as in test_link_delay.py."""

from __future__ import annotations

import pytest

from drafter.tree_growth import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack, in_memory_spans
from tests.services.test_pipeline import PROMPT

DELAY_MS = 40.0


@pytest.fixture(scope="module")
def exporter():
    return in_memory_spans()


def served(exporter, tiny_target, tiny_draft, redis_url, draft_ahead: bool):
    exporter.clear()
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_url, mode="chain", link_delay_ms=DELAY_MS,
                           min_pass_ms=20, draft_ahead=draft_ahead)
    try:
        out = Client(stack.address).generate(token_ids=tiny_target.encode(PROMPT), max_new_tokens=32, draft_len=3)
        registry = stack.pipeline.metrics.registry
        hits = {o: registry.get_sample_value("specgrove:spec_decode_ahead_rounds_total", {"outcome": o}) or 0
                for o in ("hit", "miss")}
        link = next(iter(stack.pipeline.links.values())).summary()
    finally:
        stack.stop()
    rounds = [s for s in exporter.get_finished_spans() if s.name == "round"]
    return out, hits, link, rounds


@pytest.mark.parametrize("draft_ahead", [True, False])
def test_rounds_run_ahead_overlap_the_orchestrators_hops_and_change_no_token(
        draft_ahead, exporter, tiny_target, tiny_draft, redis_server):
    out, hits, link, rounds = served(exporter, tiny_target, tiny_draft, redis_server.url, draft_ahead)
    expected = SpeculativeEngine(tiny_target).generate(tiny_target.encode(PROMPT),
                                                       SamplingParams(max_new_tokens=32)).token_ids
    assert out.token_ids == expected  # T = 0: the target's own greedy tokens
    assert out.usage["num_draft_tokens"] > 0 and len(rounds) == out.usage["rounds"]
    ahead = [r for r in rounds if r.attributes.get("specgrove.ahead")]
    if not draft_ahead:
        assert not ahead and hits == {"hit": 0, "miss": 0} and link["overlap_ms"] == 0
        return
    assert hits["miss"] == 0 and hits["hit"] == len(ahead) >= len(rounds) - 2  # all but the first (and the last)
    assert all(r.attributes["specgrove.overlap_ms"] >= 2 * DELAY_MS * 0.99 for r in ahead)
    assert link["overlap_ms"] >= 1.5 * DELAY_MS  # the planner counts it (an average, from 0)
    assert link["network_ms"] >= 4 * DELAY_MS * 0.9  # the hops themselves still take 4·D a round
