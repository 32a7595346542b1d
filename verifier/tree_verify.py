"""Tree verification with sampling without replacement (Sequoia, Chen et al. 2024, Algorithm 1).

Letters: p = target, q = draft, both warped. Walk from the root. At a node, try its children in
sampling order: child x is **accepted** with probability min(1, p(x)/q(x)); on rejection
p ← norm(max(0, p − q)) and q ← q with x removed, renormalised. If every child is rejected, the
**recovered** token is drawn from the current p; if the walk reaches a leaf, a **bonus** token is
drawn from p at that leaf. Greedy (one-hot p): follow the child equal to argmax p, else emit it.
"""

from __future__ import annotations

import torch

from specgrove.sampling import sample
from specgrove.tree import TokenTree, VerifyResult, children_of
from verifier.rejection import residual


def verify_tree(
    tree: TokenTree,
    p: torch.Tensor,  # [N + 1, V] warped target probabilities at the root (row 0) and each node
    greedy: bool,
    generator: torch.Generator | None,  # None when greedy (nothing is drawn)
) -> VerifyResult:
    assert p.ndim == 2 and p.shape[0] == tree.size + 1, (p.shape, tree.size)
    vocab = p.shape[1]
    tokens = tree.tokens.tolist()
    kids = children_of(tree.parents.tolist())
    node, path, ranks, widths = -1, [], [], []
    while True:
        children = kids.get(node, [])
        widths.append(len(children))
        p_here = p[node + 1]
        if greedy:
            target_token = int(p_here.argmax())
            hit = next((rank for rank, c in enumerate(children, 1) if tokens[c] == target_token), 0)
            ranks.append(hit)
            if not hit:
                return VerifyResult(path, [tokens[i] for i in path], target_token, ranks, widths)
            node = children[hit - 1]
            path.append(node)
            continue
        if not children:
            ranks.append(0)
            bonus = int(sample(p_here, generator))
            return VerifyResult(path, [tokens[i] for i in path], bonus, ranks, widths)
        q_here = tree.dense_q(node + 1, vocab)
        accepted = 0
        for rank, child in enumerate(children, 1):
            x = tokens[child]
            u = float(torch.rand((), generator=generator))
            if u * float(q_here[x]) < float(p_here[x]):
                accepted = rank
                break
            p_here = residual(p_here, q_here)
            q_here = q_here.clone()
            q_here[x] = 0.0
            mass = q_here.sum()
            q_here = q_here / mass if mass > 0 else q_here
        ranks.append(accepted)
        if not accepted:
            recovered = int(sample(p_here, generator))
            return VerifyResult(path, [tokens[i] for i in path], recovered, ranks, widths)
        node = children[accepted - 1]
        path.append(node)
