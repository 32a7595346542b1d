"""``specgrove eval-draft``: how good a draft is for the target, measured in one run.

For each prompt the target writes its greedy continuation; on prompt + continuation (teacher
forcing, one pass each) we compare, at every continuation position, the target's p and the
draft's q: greedy top-1 agreement (argmax p = argmax q) and the expected acceptance of one
sampled draft token at T = 1, 1 − TV(p, q). Then the real engine runs ``--mode chain
--draft-len 4`` at T = 0 for the mean accepted length, and single-token decode steps of both
models give the draft's per-token latency as a fraction of the target's.
"""

from __future__ import annotations

import statistics
import time

import torch

from drafter.feature_sequence import FeatureDraftModel, primed_sequence, teacher_forced_logits
from specgrove.models import CachedSequence, CausalLM
from specgrove.sampling import SamplingParams


@torch.inference_mode()
def position_stats(target: CausalLM, draft: CausalLM, prompt: list[int], continuation: list[int]) -> tuple[list[bool], list[float]]:
    """Per continuation position: (top-1 agreement, 1 − TV(p, q) at T = 1)."""
    ids = torch.tensor(prompt + continuation, dtype=torch.long)
    positions = torch.arange(len(ids))
    n = len(continuation)
    p = torch.softmax(target.forward(ids, positions, target.new_cache(), num_logits=n + 1)[:-1], -1)  # [n, V]
    if isinstance(draft, FeatureDraftModel):  # teacher forcing on the target's own features
        q = torch.softmax(teacher_forced_logits(draft, target, prompt + continuation)[-n - 1:-1], -1)
    else:
        q = torch.softmax(draft.forward(ids, positions, draft.new_cache(), num_logits=n + 1)[:-1], -1)  # [n, V]
    agree = (p.argmax(-1) == q.argmax(-1)).tolist()
    overlap = torch.minimum(p, q).sum(-1).tolist()  # 1 − TV
    return agree, overlap


def step_ms(model: CausalLM, context: list[int], steps: int = 24, target: CausalLM | None = None) -> float:
    """Median time of one single-token decode step after `context` (a feature draft: one drafted
    token on top of the target's features of `context`, which ``target`` computes)."""
    seq = primed_sequence(model, target, context) if isinstance(model, FeatureDraftModel) else CachedSequence(model)
    ctx = list(context)
    seq.logits_for(ctx, 1)
    times = []
    for i in range(steps):
        ctx.append(ctx[-1 - (i % 7)])
        t0 = time.perf_counter()
        seq.logits_for(ctx, 1)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def evaluate(target: CausalLM, draft: CausalLM | None, drafter, prompts: list[list[int]], max_new_tokens: int = 64,
             draft_len: int = 4) -> dict:
    from orchestrator.engine import SpeculativeEngine

    greedy = SamplingParams(max_new_tokens=max_new_tokens)
    plain = SpeculativeEngine(target)
    chain = SpeculativeEngine(target, drafter, draft_len)
    agree: list[bool] = []
    overlap: list[float] = []
    accepted_lengths: list[float] = []
    for ids in prompts:
        continuation = plain.generate(ids, greedy).token_ids
        if draft is not None:
            a, o = position_stats(target, draft, ids, continuation)
            agree += a
            overlap += o
        result = chain.generate(ids, greedy)
        assert result.token_ids == continuation, "speculation changed the greedy output"
        accepted_lengths.append(result.mean_accepted_length)
    t_target = step_ms(target, prompts[0])
    t_draft = step_ms(draft, prompts[0], target=target) if draft is not None else None
    return {
        "prompts": len(prompts),
        "positions": len(agree),
        "top1_agreement": round(statistics.fmean(agree), 4) if agree else None,
        "expected_acceptance_t1": round(statistics.fmean(overlap), 4) if overlap else None,
        f"mean_accepted_length_k{draft_len}": round(statistics.fmean(accepted_lengths), 4),
        "target_step_ms": round(t_target, 3),
        "draft_step_ms": round(t_draft, 3) if t_draft is not None else None,
        "draft_cost_fraction": round(t_draft / t_target, 4) if t_draft is not None else None,
    }
