"""Continuous batching changes no output (issue #13): concurrent sessions through one served
verifier, whose rounds share forward passes, each give what they give alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from drafter.model_drafter import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack

PROMPTS = ["my name is", "the cat", "once upon a time there was a", "a", "hello world, this is",
           "to be or not to be", "one two three", "where"]
# per client: speculation and sampling, all greedy (T = 0; top-k / top-p change nothing then)
REQUESTS = [dict(mode="ar"), dict(mode="chain", draft_len=4), dict(mode="chain", draft_len=2, top_k=5),
            dict(mode="tree", tree_budget=6, tree_depth=3), dict(mode="chain", draft_len=4, top_p=0.9),
            dict(mode="tree", tree_budget=8, tree_depth=4), dict(mode="ar", top_k=3), dict(mode="chain", draft_len=3)]
LENGTHS = [40, 24, 33, 40, 17, 28, 40, 36]


def mean_batch(worker) -> float:
    registry = worker.metrics.registry
    return registry.get_sample_value("specgrove:batch_size_sum") / registry.get_sample_value("specgrove:batch_size_count")


def test_eight_concurrent_sessions_each_equal_their_own_greedy_output(tiny_target, tiny_draft, redis_server):
    plain = SpeculativeEngine(tiny_target)
    expected = [plain.generate(tiny_target.encode(p), SamplingParams(max_new_tokens=n)).token_ids
                for p, n in zip(PROMPTS, LENGTHS)]
    # passes made slow (as on a GPU, where a pass costs about the same for 1 token as for dozens)
    # so that the sessions' rounds meet at the verifier
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, min_pass_ms=30)
    try:
        client = Client(stack.address)

        def run(i: int):
            return client.generate(PROMPTS[i], max_new_tokens=LENGTHS[i], **REQUESTS[i])

        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(run, range(8)))
        assert [o.token_ids for o in outputs] == expected
        assert sum(o.usage["num_draft_tokens"] for o in outputs) > 0
        assert mean_batch(stack.verifier_worker) > 1.5  # rounds did share passes
    finally:
        stack.stop()


def test_a_seeded_session_gives_the_same_tokens_alone_and_in_a_batch_of_eight(tiny_target, tiny_draft, redis_server):
    stack = InProcessStack(tiny_target, ModelDrafter(tiny_draft), redis_server.url, min_pass_ms=30)
    sampled = dict(temperature=1.0, top_p=0.95, max_new_tokens=32, mode="chain", draft_len=4)
    try:
        client = Client(stack.address)
        alone = client.generate(PROMPTS[0], seed=7, **sampled)
        assert mean_batch(stack.verifier_worker) == 1

        def run(i: int):
            return client.generate(PROMPTS[i], seed=7 if i == 0 else 100 + i, **sampled)

        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(run, range(8)))
        assert together[0].token_ids == alone.token_ids
        assert together[0].usage["num_draft_tokens"] > 0
        assert mean_batch(stack.verifier_worker) > 1.5
    finally:
        stack.stop()
