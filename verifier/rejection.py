"""Chain rejection sampling (Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling").

Letters: **p** = target distribution, **q** = draft distribution, both already warped by
``specgrove.sampling.warp``. For draft tokens d_1..d_K sampled from q_1..q_K:

- **accepted** tokens: d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)), left to right,
  until the first rejection;
- **recovered** token: at the first rejected position i, one token drawn from
  norm(max(0, p_i − q_i)) replaces d_i;
- **bonus** token: when all K are accepted, one token drawn from p_{K+1}.

Each round therefore emits ``num_accepted + 1`` tokens, distributed exactly as sampling from p.
With one-hot (greedy) p and q the same rule accepts exactly while d_i == argmax p_i and the
recovered/bonus token is argmax p, so greedy needs no separate path.

Served rounds verify a chain as a width-one tree (tree_verify.py, which on a chain is this rule,
one node at a time); ``verify_chain`` is the batched form over B chains at once, the reference
the statistical tests hold the rule to (and the form a batched verifier can use for chains).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specgrove.sampling import sample


@dataclass(frozen=True)
class ChainVerdict:
    num_accepted: torch.Tensor  # [B] long, in [0, K]
    next_token: torch.Tensor  # [B] long: recovered if num_accepted < K, else bonus


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) over the last dim [..., V]; falls back to p where p ≤ q everywhere."""
    r = (p - q).clamp_min(0.0)
    mass = r.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(torch.finfo(r.dtype).tiny), p)


def verify_chain(
    p: torch.Tensor,  # [B, K+1, V] target probabilities at each draft position and the bonus one
    q: torch.Tensor,  # [B, K, V] draft probabilities each draft token was sampled from
    draft_tokens: torch.Tensor,  # [B, K] long
    generator: torch.Generator,
) -> ChainVerdict:
    assert p.ndim == 3 and q.ndim == 3 and draft_tokens.ndim == 2, (p.shape, q.shape, draft_tokens.shape)
    batch, k_plus_1, vocab = p.shape
    k = k_plus_1 - 1
    assert q.shape == (batch, k, vocab) and draft_tokens.shape == (batch, k), (q.shape, draft_tokens.shape)
    if k == 0:
        return ChainVerdict(torch.zeros(batch, dtype=torch.long), sample(p[:, 0], generator))

    index = draft_tokens.unsqueeze(-1)  # [B, K, 1]
    p_draft = p[:, :k].gather(-1, index).squeeze(-1)  # [B, K]
    q_draft = q.gather(-1, index).squeeze(-1)  # [B, K]
    u = torch.rand(batch, k, generator=generator)  # [B, K]
    accepted = u * q_draft < p_draft  # u < min(1, p/q), without dividing
    num_accepted = accepted.long().cumprod(dim=-1).sum(dim=-1)  # [B] length of the accepted prefix

    rows = torch.arange(batch)
    p_next = p[rows, num_accepted]  # [B, V] p at the first rejection, or the bonus position
    rejected = (num_accepted < k).unsqueeze(-1)  # [B, 1]
    q_next = q[rows, num_accepted.clamp(max=k - 1)] * rejected  # [B, V], zero for bonus rows
    next_token = sample(residual(p_next, q_next), generator)  # residual(p, 0) == p: the bonus
    return ChainVerdict(num_accepted, next_token)
