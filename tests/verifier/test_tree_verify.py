"""Tree verification: hand-built cases, then statistical exactness with a bigram target.

The statistical test uses a synthetic bigram world: the target's next-token distribution depends
only on the previous token (P1 at the root, P2[x] after x), the draft's likewise (Q1, Q2). Each
sample drafts a tree (root: 3 children without replacement; first child: 2 children; second
child: 1), verifies it, and if only one token came out, drafts a fresh tree after it. The first
two emitted tokens must follow P1 and the marginal Σ_x P1(x)·P2[x] (Pearson chi-square,
p > 1e-3, 25,000 samples, fixed seed); wrong samplers must fail (p < 1e-6).
"""

import pytest
import torch

from specgrove.sampling import SamplingParams, sample_without_replacement, truncate_top_n, warp
from specgrove.tree import TokenTree
from tests.stats import ALPHA, NEGATIVE_ALPHA, chi_square_p_value
from verifier.tree_verify import verify_tree

VOCAB = 20
SAMPLES = 25_000
SHAPE = [-1, -1, -1, 0, 0, 1]  # root: 3 children; node 0: 2 children; node 1: 1 child


def test_greedy_follows_the_child_equal_to_target_argmax():
    tree = TokenTree.from_lists(tokens=[5, 7, 3, 9], parents=[-1, -1, 1, 1])
    p = torch.zeros(5, 12)
    p[0, 7] = p[2, 9] = p[4, 1] = 1.0  # root -> 7 (node 1) -> 9 (node 3) -> bonus 1
    p[1, 0] = p[3, 0] = 1.0
    result = verify_tree(tree, p, greedy=True, generator=torch.Generator())
    assert result.accepted_nodes == [1, 3] and result.accepted_tokens == [7, 9]
    assert result.next_token == 1  # bonus at the leaf
    assert result.accepted_rank == [2, 2, 0] and result.num_children == [2, 2, 0]


def test_greedy_emits_target_argmax_when_no_child_matches():
    tree = TokenTree.from_lists(tokens=[5, 7], parents=[-1, -1])
    p = torch.zeros(3, 12)
    p[0, 4] = 1.0
    p[1:, 0] = 1.0
    result = verify_tree(tree, p, greedy=True, generator=torch.Generator())
    assert result.accepted_nodes == [] and result.next_token == 4 and result.accepted_rank == [0]


def test_rejected_child_is_removed_from_q_and_residual_is_used():
    # root q = {0: 0.5, 1: 0.5}; p puts nothing on 0, so child 0 (token 0) is always rejected;
    # then q <- {1: 1}, p <- norm(max(0, p - q)) = [0, 0.2, 0.8] / 1 ... child token 1 is accepted w.p. p'(1)/1
    tree = TokenTree.from_lists(tokens=[0, 1], parents=[-1, -1], q={0: {0: 0.5, 1: 0.5}})
    p = torch.tensor([[0.0, 0.7, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    outcomes = [verify_tree(tree, p, greedy=False, generator=gen) for _ in range(4000)]
    assert all(r.accepted_rank[0] != 1 for r in outcomes)
    # after the first rejection p' = norm([0, 0.2, 0.3]) = [0, 0.4, 0.6]; token 1 accepted w.p. 0.4
    accepted_second = sum(r.accepted_rank[0] == 2 for r in outcomes) / len(outcomes)
    assert abs(accepted_second - 0.4) < 0.03  # 4000 samples: sd 0.008, so 0.03 is > 3.5 sd
    # when both are rejected, p'' = norm(max(0, p' - {1: 1})) = token 2
    assert all(r.next_token == 2 for r in outcomes if r.accepted_rank[0] == 0)


def bigram_world(params: SamplingParams, seed: int):
    gen = torch.Generator().manual_seed(seed)
    p1_logits = 2.0 * torch.randn(VOCAB, generator=gen)
    p2_logits = 2.0 * torch.randn(VOCAB, VOCAB, generator=gen)
    q1_logits = p1_logits + 1.5 * torch.randn(VOCAB, generator=gen)
    q2_logits = p2_logits + 1.5 * torch.randn(VOCAB, VOCAB, generator=gen)
    return (warp(p1_logits, params), warp(p2_logits, params), warp(q1_logits, params), warp(q2_logits, params))


class BigramDraft:
    """Top-n truncated draft rows, prepared once per context token: (ids, probs, dense q)."""

    def __init__(self, q1: torch.Tensor, q2: torch.Tensor, top_n: int):
        self.first = self.row(q1, top_n)
        self.after = [self.row(q2[x], top_n) for x in range(VOCAB)]

    @staticmethod
    def row(q: torch.Tensor, top_n: int):
        ids, probs = truncate_top_n(q, top_n)
        padded_ids = torch.full((VOCAB,), -1, dtype=torch.long)
        padded_probs = torch.zeros(VOCAB)
        padded_ids[: len(ids)], padded_probs[: len(ids)] = ids, probs
        return padded_ids, padded_probs, torch.zeros(VOCAB).index_put((ids,), probs)


CHILDREN = {node: SHAPE.count(node) for node in [-1] + list(range(len(SHAPE)))}


def draft_tree(first_row, draft: BigramDraft, gen: torch.Generator) -> TokenTree:
    """Grow SHAPE breadth-first: each node's children are drawn without replacement from its q."""
    tokens: list[int] = []
    rows = [first_row]
    for node in [-1] + list(range(len(SHAPE))):
        if CHILDREN[node]:
            picked = sample_without_replacement(rows[node + 1][2], CHILDREN[node], gen).tolist()
            tokens.extend(picked)  # SHAPE is breadth-first, so these are the next node indices
            rows.extend(draft.after[t] for t in picked)
    q_ids = torch.stack([r[0] for r in rows])
    q_probs = torch.stack([r[1] for r in rows])
    return TokenTree(torch.tensor(tokens), torch.tensor(SHAPE), q_ids, q_probs)


def one_round(p_first, first_row, p2, draft, gen, greedy):
    tree = draft_tree(first_row, draft, gen)
    p_rows = torch.cat([p_first.unsqueeze(0), p2[tree.tokens]])  # [N + 1, V]
    result = verify_tree(tree, p_rows, greedy=greedy, generator=gen)
    return result.accepted_tokens + [result.next_token]


def first_two_tokens(params: SamplingParams, top_n: int = VOCAB, seed: int = 3):
    p1, p2, q1, q2 = bigram_world(params, seed)
    draft = BigramDraft(q1, q2, top_n)
    gen = torch.Generator().manual_seed(seed + 1)
    firsts, seconds = [], []
    for _ in range(SAMPLES):
        emitted = one_round(p1, draft.first, p2, draft, gen, params.greedy)
        if len(emitted) < 2:
            x = emitted[0]
            emitted += one_round(p2[x], draft.after[x], p2, draft, gen, params.greedy)[:1]
        firsts.append(emitted[0])
        seconds.append(emitted[1])
    return firsts, seconds, p1, (p1.unsqueeze(1) * p2).sum(0)


@pytest.mark.parametrize(
    "params, top_n",
    [
        (SamplingParams(temperature=0.5), VOCAB),
        (SamplingParams(temperature=1.0), VOCAB),
        (SamplingParams(temperature=1.5), VOCAB),
        (SamplingParams(temperature=1.0, top_p=0.8), VOCAB),
        (SamplingParams(temperature=1.0), 6),  # the drafter's q truncated to its top 6
    ],
    ids=["T0.5", "T1", "T1.5", "T1-p0.8", "T1-top6"],
)
def test_tree_speculation_follows_the_target(params, top_n):
    firsts, seconds, first_p, second_p = first_two_tokens(params, top_n)
    assert chi_square_p_value(firsts, first_p) > ALPHA
    assert chi_square_p_value(seconds, second_p) > ALPHA


def test_negative_control_keeping_q_after_rejection_is_detected(monkeypatch):
    """Forgetting to update p to the residual after a rejected child breaks exactness."""
    monkeypatch.setattr("verifier.tree_verify.residual", lambda p, q: p)
    firsts, _, first_p, _ = first_two_tokens(SamplingParams(temperature=1.0))
    assert chi_square_p_value(firsts, first_p) < NEGATIVE_ALPHA
