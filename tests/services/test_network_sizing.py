"""An injected delay on the drafter→verifier link changes what the planner drafts: trees on a
fast link, plain decoding (K = 0, with occasional probes) on a link too slow to pay off.

The verifier emulates a large target (every pass lasts ≥ 80 ms whatever its size, as on a GPU;
far above a tiny draft level even on a loaded CI core)
and the draft is the target itself (everything accepted, ~1 ms a level), so speculation pays
by a wide margin on a fast link; a 300 ms link makes every speculative round dearer than the
tokens it can win."""

from __future__ import annotations

import pytest

from drafter.tree_growth import ModelDrafter
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack


def tree_sizes(tiny_target, redis_url, delay_ms: float) -> tuple[list[int], dict]:
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_target), redis_url, mode="tree", link_delay_ms=delay_ms,
                           min_pass_ms=80)
    try:
        out = Client(stack.address).generate(prompt="my name is", max_new_tokens=56)
        link = next(iter(stack.pipeline.links.values()))
        return [c.stats.tree_size for c in out.chunks], link.summary()
    finally:
        stack.stop()


@pytest.mark.parametrize("delay_ms", [0.0, 300.0])
def test_planner_follows_the_measured_link(delay_ms, tiny_target, redis_server):
    sizes, link = tree_sizes(tiny_target, redis_server.url, delay_ms)
    assert sizes[:2] == [0, 0]  # plain decoding: the first round (prefill) and a clean measurement
    planned = sizes[3:]  # after the measuring rounds
    assert link["network_ms"] >= 0.8 * delay_ms  # the delay is seen as network time
    if delay_ms == 0:
        assert sum(s > 0 for s in planned) >= len(planned) - 1, sizes  # speculation pays: trees
    else:
        probes = len(planned) // 16 + 1  # RoundPlanner.probe_every = 16
        assert sum(s > 0 for s in planned) <= probes, sizes  # K = 0, but for the periodic probes
