"""Speculative sampling served over gRPC is distributed exactly as the target's own sampling,
well past the first round: the same statistical tests as tests/orchestrator/test_exactness.py,
through real loopback gRPC servers (orchestrator, drafter, verifier, run in this process as the
pipeline tests run them; or one worker holding the drafter and the verifier) and a real
redis-server. What this adds over the engine: per-round generators keyed by (seed, step) on two
workers, the protobuf codec of trees, q and results, the verifier's tree path for chains, and the
round planner.

N seeded requests of 5 tokens per case; the joint of tokens 1–2 and the marginal of token 5
pass Pearson's chi-square against the exact target distribution (p > 1e-3), the joint fails
against the draft's (p < 1e-6). N, bounds and power: docs/exactness.md.
"""

from __future__ import annotations

import pytest

from drafter.tree_growth import ModelDrafter
from specgrove_apps.client import Client
from tests import exactness as ex
from tests.services.conftest import InProcessStack

N = 500  # seeded requests per case (about 30 ms each on 2 cores)
MAX_TV = 0.15  # each test detects any shift of this total variation with ≥ 90% probability
CHAIN = dict(mode="chain", draft_len=4)
TREE = dict(mode="tree", tree_budget=8, tree_depth=4)  # pinned: every round drafts 8 nodes, depth ≤ 4
TOP_N = 6  # the drafter sends q truncated to its top 6 tokens (of 11), as it sends its top 64 of a real vocabulary


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return ex.load_models(tmp_path_factory.mktemp("served_exactness"))


def serve(models, redis_url: str, case: str, speculation: dict, n: int, **pipeline):
    """n seeded requests: (outputs, per request its chunks' (drafted, accepted, emitted, tree depth),
    every verify result the orchestrator received). Draft-ahead is on (the served default): at
    least a fifth of the requests take a round the drafter ran ahead, before it was asked for."""
    target, draft = models
    stack = InProcessStack(target, ModelDrafter(draft, top_n=TOP_N), redis_url, **pipeline)
    results = []
    stack.pipeline.acceptance.observe = recording(stack.pipeline.acceptance.observe, results)
    client = Client(stack.address)
    try:
        completions = [client.generate(token_ids=target.encode(ex.PROMPT), seed=seed, max_new_tokens=ex.MAX_NEW_TOKENS,
                                       **ex.SAMPLING[case], **speculation) for seed in range(n)]
    finally:
        client.close()
        stack.stop()
    registry = stack.pipeline.metrics.registry
    hits = registry.get_sample_value("specgrove:spec_decode_ahead_rounds_total", {"outcome": "hit"}) or 0
    assert hits >= n // 5, f"{hits} rounds run ahead were used"
    paths = {path: stack.drafter_worker.metrics.registry.get_sample_value(
        "specgrove:draft_verified_rounds_total", {"path": path}) or 0 for path in ("in_process", "grpc")}
    drafted = sum(1 for done in completions for c in done.chunks if c.stats.num_drafted)
    assert paths["in_process" if pipeline.get("colocated") else "grpc"] >= drafted // 2 > 0, paths
    assert paths["grpc" if pipeline.get("colocated") else "in_process"] == 0, paths
    rounds = [[(c.stats.num_drafted, c.stats.num_accepted, len(c.token_ids), c.stats.tree_depth) for c in done.chunks]
              for done in completions]
    return [done.token_ids for done in completions], rounds, results


def recording(observe, results: list):
    """A spy on the verify results the pipeline learns acceptance from (one per drafted round)."""
    def spy(result):
        results.append(result)
        observe(result)

    return spy


def chain_rounds(rounds) -> list[ex.ChainRound]:
    return [r for request in rounds for r in ex.chain_rounds([r[:3] for r in request], CHAIN["draft_len"])]


def test_served_chains_are_exact_after_rejections_mid_chain(models, redis_server):
    case = "T1-k6-p0.9"
    outputs, rounds, _ = serve(models, redis_server.url, case, CHAIN, N, stop_policy="static")
    chains = chain_rounds(rounds)
    assert sum(r.rejected_mid_chain for r in chains) >= N // 10
    assert not any(r.stopped_early for r in chains)  # a static policy drafts every token it may
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)


def test_chains_served_by_one_worker_are_exact_after_rejections_mid_chain(models, redis_server):
    """``serve worker`` (the default deployment): the drafter verifies on the verifier in its own
    process by a direct call."""
    case = "T1-k6-p0.9"
    outputs, rounds, _ = serve(models, redis_server.url, case, CHAIN, N, stop_policy="static", colocated=True)
    assert sum(r.rejected_mid_chain for r in chain_rounds(rounds)) >= N // 10
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)


def test_served_trees_are_exact_after_rejections_mid_tree(models, redis_server):
    case = "T1-p0.9"
    outputs, rounds, results = serve(models, redis_server.url, case, TREE, N, stop_policy="static")
    assert sum(depth >= 3 for request in rounds for *_, depth in request) >= N // 2  # trees of depth ≥ 3
    assert sum(map(ex.rejected_mid_tree, results)) >= N // 10  # accepted part-way, then rejected
    assert sum(len(r.accepted_tokens) >= 3 for r in results) >= N // 10
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)


def test_served_adaedl_chains_are_exact_when_they_stop_early(models, redis_server):
    """The pipeline's default stop policy (AdaEDL, γ = 0.2, λ₀ = 0.5), its budget sent to the drafter."""
    case = "T0.5"
    outputs, rounds, _ = serve(models, redis_server.url, case, CHAIN, N, stop_policy="adaedl", adaedl_lambda=0.5)
    chains = chain_rounds(rounds)
    assert sum(r.stopped_early for r in chains) >= N // 10  # the entropy rule ended chains before their limit
    assert sum(r.drafted == r.allowed >= 3 for r in chains) >= N // 10  # and let others run to it
    assert sum(r.rejected_mid_chain for r in chains) >= N // 20
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)
