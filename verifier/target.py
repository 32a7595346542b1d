"""The target side of a round: score every draft position in one forward pass, then verify."""

from __future__ import annotations

import torch

from specgrove.grammar import Constraint, constrain
from specgrove.models import CachedSequence, CausalLM
from specgrove.proposal import Proposal
from specgrove.sampling import SamplingParams, warp
from specgrove.tree import TokenTree, VerifyResult
from verifier.rejection import verify_chain, verify_chain_greedy
from verifier.tree_verify import verify_tree


class TargetSession:
    """One generation's target KV cache; each call is one verify pass."""

    def __init__(self, model: CausalLM, keep_features: bool = False):
        self.sequence = CachedSequence(model, keep_features=keep_features)
        self.constraint: Constraint | None = None  # structured output: every row of p is masked by its path

    def features(self, count: int) -> torch.Tensor:  # [count, H]
        """The target's features of the first ``count`` cached tokens (keep_features=True)."""
        assert self.sequence.features is not None and count <= len(self.sequence.tokens), count
        return self.sequence.features[:count]

    def verify(
        self, context: list[int], proposal: Proposal, params: SamplingParams, generator: torch.Generator
    ) -> tuple[int, int]:
        """Chain: return (number of accepted draft tokens, the recovered or bonus token)."""
        k = len(proposal.tokens)
        logits = self.sequence.logits_for(context + proposal.tokens, num_logits=k + 1)  # [K+1, V]
        logits = constrain(logits, self.constraint, context, [proposal.tokens[:i] for i in range(k + 1)])
        if params.greedy:  # argmax only: no warping, residual or sampling over the vocabulary
            return verify_chain_greedy(logits, proposal.tokens)
        p = warp(logits, params)  # [K+1, V]
        verdict = verify_chain(
            p.unsqueeze(0), proposal.q.unsqueeze(0), torch.tensor([proposal.tokens], dtype=torch.long), generator
        )
        return int(verdict.num_accepted[0]), int(verdict.next_token[0])

    def verify_tree(
        self, context: list[int], tree: TokenTree, params: SamplingParams, generator: torch.Generator
    ) -> VerifyResult:
        """Tree: one pass over the root and all nodes, verify, compact the cache to the accepted path."""
        logits = self.sequence.tree_logits(
            context, tree.tokens.tolist(), tree.parents.tolist(), 0, tree.size, with_root=True
        )  # [N + 1, V]
        logits = constrain(logits, self.constraint, context, [[]] + tree.paths())
        p = logits if params.greedy else warp(logits, params)  # greedy verification reads only the argmax
        result = verify_tree(tree, p, params.greedy, generator)
        self.sequence.keep_path(result.accepted_nodes)
        return result
