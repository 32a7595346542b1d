"""Batched drafting: sessions drafting at once draw their levels in one draft pass,
and each gets what it would have drawn alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from drafter.feature_sequence import primed_sequence, run_feeds, target_features
from drafter.worker import DrafterWorker
from orchestrator.engine import SpeculativeEngine
from specgrove.budget import DraftBudget
from specgrove.round import Round, RoundTiming
from specgrove.sampling import SamplingParams
from tests.drafter.test_feature_model import exact_marginals
from tests.stats import ALPHA, chi_square_p_value, detectable_tv

CONTEXTS = ["the cat sat on the mat", "a dog ran", "once upon a time there was a", "hello world", "to be or not"]


def mean_draft_batch(worker: DrafterWorker) -> float:
    registry = worker.metrics.registry
    return registry.get_sample_value("specgrove:batch_size_sum") / registry.get_sample_value("specgrove:batch_size_count")


def feeds_of(tiny_target, model) -> list:
    """Five sessions' next passes, unlike each other: tree levels and chains of new pairs, over
    caches of different lengths, some wanting q for the last row, some for every row."""
    feeds = []
    for i, text in enumerate(CONTEXTS):
        ids = tiny_target.encode(text)
        sequence = primed_sequence(model, tiny_target, ids)  # pairs cached up to the context's end
        if i % 2:  # a tree's first level: two or three children of the root, under a tree mask
            parents = [-1] * (2 + i // 2)
            steps = sequence.tree_logits_steps(ids, [5, 6, 7][: len(parents)], parents, 0, len(parents))
        else:  # the context grew by 1 + i confirmed tokens: feed them on the target's features
            longer = ids + [3 + j for j in range(1 + i)]
            sequence.set_features(target_features(tiny_target, longer[:-1]))
            steps = sequence.logits_for_steps(longer)
        feeds.append(next(steps))
    return feeds


def test_one_pass_over_several_sessions_equals_each_pass_alone(tiny_target, tiny_feature_drafter):
    model = tiny_feature_drafter.model
    alone = [feed.run() for feed in feeds_of(tiny_target, model)]
    together = run_feeds(feeds_of(tiny_target, model))
    assert len({f.past for f in feeds_of(tiny_target, model)}) > 1  # caches of different lengths
    for (out, kv, logits), (out_b, kv_b, logits_b) in zip(alone, together):
        assert torch.allclose(out, out_b, atol=1e-5)
        assert kv[0].shape == kv_b[0].shape and torch.allclose(kv[0], kv_b[0], atol=1e-5)
        assert torch.allclose(kv[1], kv_b[1], atol=1e-5)
        assert (logits is None) == (logits_b is None)
        if logits is not None:
            finite = torch.isfinite(logits)
            assert torch.equal(finite, torch.isfinite(logits_b))
            assert torch.allclose(logits[finite], logits_b[finite], atol=1e-4)


def round_levels(worker: DrafterWorker, tiny_target, session: str, text: str, depth: int, barrier=None):
    """One greedy chain round of ``depth`` levels: (the tokens, the draft passes it rode)."""
    ids = tiny_target.encode(text)

    def fetch(start: int):
        return start, target_features(tiny_target, ids[:-1])[start:]

    worker.prefetch_features(Round(session, 1, tuple(ids), SamplingParams(), 0), fetch)
    if barrier is not None:
        barrier.wait()
    timing = RoundTiming()
    levels = list(worker.levels(Round(session, 1, tuple(ids), SamplingParams(), 0), list(range(-1, depth - 1)),
                                DraftBudget(depth), timing=timing))
    return [t for level in levels for t in level.tokens], timing


def test_sessions_drafting_at_once_share_passes_and_draw_what_they_draw_alone(tiny_target, tiny_feature_drafter):
    depth = 6
    alone_worker = DrafterWorker(tiny_feature_drafter)
    alone = [round_levels(alone_worker, tiny_target, f"s{i}", text, depth)[0] for i, text in enumerate(CONTEXTS)]
    assert mean_draft_batch(alone_worker) == 1
    worker = DrafterWorker(tiny_feature_drafter)
    barrier = threading.Barrier(len(CONTEXTS))
    with ThreadPoolExecutor(len(CONTEXTS)) as pool:
        together = list(pool.map(lambda i: round_levels(worker, tiny_target, f"s{i}", CONTEXTS[i], depth, barrier),
                                 range(len(CONTEXTS))))
    assert [tokens for tokens, _ in together] == alone
    assert all(len(tokens) == depth for tokens in alone)
    assert mean_draft_batch(worker) > 1.5  # levels of several sessions in one pass
    assert max(timing.draft_rows for _, timing in together) > 1


def test_a_round_left_mid_way_frees_its_place(tiny_target, tiny_feature_drafter):
    """A caller that stops reading (a stale or cancelled round) closes its steps; the next round
    of the session drafts normally."""
    worker = DrafterWorker(tiny_feature_drafter)
    ids = tiny_target.encode(CONTEXTS[0])
    worker.prefetch_features(Round("s", 1, tuple(ids), SamplingParams(), 0), lambda start: (start, target_features(tiny_target, ids[:-1])[start:]))
    levels = worker.levels(Round("s", 1, tuple(ids), SamplingParams(), 0), list(range(-1, 5)), DraftBudget(6))
    next(levels)
    levels.close()
    assert not worker.batcher._waiting and not worker.batcher._turns.busy
    tokens, _ = round_levels(worker, tiny_target, "s", CONTEXTS[0], 6)
    assert len(tokens) == 6


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0)], ids=["T1"])
def test_sampled_chains_are_exact_when_sessions_share_draft_passes(tiny_target, tiny_feature_drafter, params):
    """2,000 seeded generations of 5 tokens, 8 at a time: their feature-draft levels share draft
    passes (and their rounds verify passes). Round 2 drafts a chain of 3 (rejections mid-chain
    happen). Tokens 2 and 3 against the exact target marginals: Pearson's chi-square, p > 1e-3.
    Power (tests/stats.py): any error of total variation ≥ 0.08 in either token's distribution
    fails with probability ≥ 90%."""
    prompt_ids = tiny_target.encode("the cat sat")
    exact = exact_marginals(tiny_target, prompt_ids, params, 3)
    assert detectable_tv(exact[1], 2000) < 0.085 and detectable_tv(exact[2], 2000) < 0.085  # the power stated
    engine = SpeculativeEngine(tiny_target, tiny_feature_drafter, draft_len=3)
    engine.verifier.min_pass_ms = 5  # rounds meet, as on a large target
    vocab = tiny_target.vocab_size

    def one(seed: int):
        return engine.generate(prompt_ids, SamplingParams(**{**params.__dict__, "seed": seed, "max_new_tokens": 5}))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(2000)))
    tokens = [r.token_ids + [vocab] * (5 - len(r.token_ids)) for r in results]
    assert sum(0 < s.num_accepted < s.num_drafted for r in results for s in r.rounds) > 100  # mid-chain rejections
    assert mean_draft_batch(engine.drafts) > 1.5  # sessions drew their levels together
    assert chi_square_p_value([t[1] for t in tokens], exact[1]) > ALPHA
    assert chi_square_p_value([t[2] for t in tokens], exact[2]) > ALPHA
