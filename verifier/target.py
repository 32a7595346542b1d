"""The target side of a round: score the root and every draft node in one forward pass, then verify.

A chain is a tree of width one (the one chain path: Chen et al.'s rule is the tree walk with one
child per node); a plain decoding step is the empty tree."""

from __future__ import annotations

import torch

from specgrove.grammar import Constraint, constrain
from specgrove.models import CachedSequence, CausalLM
from specgrove.sampling import SamplingParams, warp
from specgrove.tree import TokenTree, VerifyResult
from verifier.tree_verify import verify_tree


class TargetSession:
    """One generation's target KV cache; each call is one verify pass."""

    def __init__(self, model: CausalLM, keep_features: bool = False):
        self.sequence = CachedSequence(model, keep_features=keep_features)
        self.constraint: Constraint | None = None  # structured output: every row of p is masked by its path
        self.step = 0  # the latest round verified (a worker refuses older ones)

    def features(self, count: int) -> torch.Tensor:  # [count, H]
        """The target's features of the first ``count`` cached tokens (keep_features=True)."""
        assert self.sequence.features is not None and count <= len(self.sequence.tokens), count
        return self.sequence.features[:count]

    def verify_tree(
        self, context: list[int], tree: TokenTree, params: SamplingParams, generator: torch.Generator | None
    ) -> VerifyResult:
        """Tree: one pass over the root and all nodes, verify, compact the cache to the accepted path."""
        logits = self.sequence.tree_logits(
            context, tree.tokens.tolist(), tree.parents.tolist(), 0, tree.size, with_root=True
        )  # [N + 1, V]
        if self.constraint is not None:  # structured output: each row masked by its path's grammar state
            logits = constrain(logits, self.constraint, context, [[]] + tree.paths())
        p = logits if params.greedy else warp(logits, params)  # greedy verification reads only the argmax
        result = verify_tree(tree, p, params.greedy, generator)
        self.sequence.keep_path(result.accepted_nodes)
        return result
