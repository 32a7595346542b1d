"""Tree attention masks: which cached and new positions each new token may attend to.

A forward pass feeds ``new_context`` trailing context tokens (causal among themselves) and then
tree nodes ``first .. last − 1`` on top of a cache holding the earlier context and nodes
``0 .. first − 1``. Key layout: [earlier context | fed context | nodes 0 .. last − 1].
Context tokens see all earlier context; a node sees the whole context, its ancestors and itself.
Masks are additive floats (0 allowed, finfo.min blocked): transformers 5.23 silently mishandles
boolean 4D masks under eager attention.
"""

from __future__ import annotations

import torch

from specgrove.tree import depths_of


def ancestor_matrix(parents: list[int]) -> torch.Tensor:
    """[N, N] bool: [i, j] is True when node j is node i or one of its ancestors."""
    n = len(parents)
    visible = torch.zeros(n, n, dtype=torch.bool)
    for i, parent in enumerate(parents):
        assert -1 <= parent < i, "parents must come before their children"
        if parent >= 0:
            visible[i] = visible[parent]
        visible[i, i] = True
    return visible


def tree_attention_mask(
    context_len: int,  # all context tokens, cached ones and the fed ones
    new_context: int,  # trailing context tokens fed in this pass (0 when only nodes are fed)
    parents: list[int],  # the whole tree's parents (−1 = child of the root)
    first: int,  # first node fed in this pass (nodes before it are already cached)
    last: int,  # one past the last node fed
) -> torch.Tensor:  # [1, 1, new_context + last − first, context_len + last] fp32
    assert 0 <= new_context <= context_len and 0 <= first <= last <= len(parents)
    cached_context = context_len - new_context
    queries = new_context + (last - first)
    allowed = torch.zeros(queries, context_len + last, dtype=torch.bool)
    allowed[:, :cached_context] = True
    causal = torch.ones(new_context, new_context, dtype=torch.bool).tril()
    allowed[:new_context, cached_context:context_len] = causal
    allowed[new_context:, :context_len] = True
    allowed[new_context:, context_len:] = ancestor_matrix(parents)[first:last, :last]
    mask = torch.zeros(queries, context_len + last)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def node_positions(context_len: int, parents: list[int]) -> list[int]:
    """Absolute position of each node: the root (last context token) sits at context_len − 1."""
    return [context_len - 1 + d for d in depths_of(parents)]
