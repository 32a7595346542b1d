"""Chain rejection sampling: exact hand-built cases, then statistical exactness with negative controls.

The statistical tests simulate a context-independent target (p depends only on the position)
with B = 200,000 independent generations of two tokens each, in one batched call per round.
Rows whose first round emitted only one token (a recovered token) draft again for position 2.
Both emitted tokens must follow the warped target marginals p_1 and p_2 (Pearson chi-square,
p-value > 1e-3 with a fixed seed), and deliberately wrong samplers must fail (p-value < 1e-6).
"""

import pytest
import torch

import verifier.rejection as rejection
from specgrove.sampling import SamplingParams, sample, warp
from tests.stats import ALPHA, NEGATIVE_ALPHA, chi_square_p_value
from verifier.rejection import verify_chain

VOCAB = 40
K = 2
SAMPLES = 200_000


def one_hot(ids: list[int], vocab: int = 6) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float().unsqueeze(0)  # [1, n, V]


def test_greedy_accepts_matching_prefix_then_recovers_target_argmax():
    p = one_hot([3, 1, 4, 0])  # target argmax at the 3 draft positions and the bonus position
    drafts = torch.tensor([[3, 1, 2]])
    verdict = verify_chain(p, one_hot([3, 1, 2]), drafts, torch.Generator().manual_seed(0))
    assert verdict.num_accepted.tolist() == [2]  # accepted: 3, 1
    assert verdict.next_token.tolist() == [4]  # recovered: the target's choice where the draft said 2


def test_greedy_all_accepted_gives_bonus_token():
    p = one_hot([3, 1, 4, 5])
    verdict = verify_chain(p, one_hot([3, 1, 4]), torch.tensor([[3, 1, 4]]), torch.Generator().manual_seed(0))
    assert verdict.num_accepted.tolist() == [3]
    assert verdict.next_token.tolist() == [5]  # bonus from p at position K+1


def test_greedy_first_token_rejected():
    p = one_hot([2, 1, 4, 5])
    verdict = verify_chain(p, one_hot([3, 1, 4]), torch.tensor([[3, 1, 4]]), torch.Generator().manual_seed(0))
    assert verdict.num_accepted.tolist() == [0]
    assert verdict.next_token.tolist() == [2]


def test_token_the_target_never_picks_is_always_rejected_and_recovered_from_residual():
    p = torch.tensor([[[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]])  # [1, K+1=2, V=3]
    q = torch.tensor([[[0.5, 0.5, 0.0]]])  # draft proposed token 0, which p gives 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        verdict = verify_chain(p, q, torch.tensor([[0]]), gen)
        assert verdict.num_accepted.item() == 0
        assert verdict.next_token.item() == 2  # residual max(0, p - q) = [0, 0, 0.5] -> token 2


def test_draft_equal_to_target_is_always_accepted():
    probs = torch.softmax(torch.randn(1, K + 1, VOCAB), dim=-1)
    gen = torch.Generator().manual_seed(1)
    drafts = sample(probs[:, :K], gen)
    verdict = verify_chain(probs, probs[:, :K], drafts, gen)
    assert verdict.num_accepted.tolist() == [K]


def test_no_draft_tokens_samples_from_p():
    p = one_hot([4])
    verdict = verify_chain(p, torch.zeros(1, 0, 6), torch.zeros(1, 0, dtype=torch.long), torch.Generator())
    assert verdict.num_accepted.tolist() == [0] and verdict.next_token.tolist() == [4]


def simulate_two_tokens(p: torch.Tensor, q: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """p [K+2, V] and q [K+1, V] per position; returns the first two emitted tokens [B] each."""
    batch = SAMPLES
    p1 = p[: K + 1].expand(batch, K + 1, VOCAB)
    drafts = sample(q[:K].expand(batch, K, VOCAB), gen)  # [B, K]
    verdict = verify_chain(p1, q[:K].expand(batch, K, VOCAB), drafts, gen)
    first = torch.where(verdict.num_accepted >= 1, drafts[:, 0], verdict.next_token)
    second = torch.where(verdict.num_accepted >= 2, drafts[:, 1], verdict.next_token)
    again = verdict.num_accepted == 0  # only one token came out: a new round drafts from position 2
    rows = int(again.sum())
    drafts2 = sample(q[1 : K + 1].expand(rows, K, VOCAB), gen)
    verdict2 = verify_chain(p[1 : K + 2].expand(rows, K + 1, VOCAB), q[1 : K + 1].expand(rows, K, VOCAB), drafts2, gen)
    second[again] = torch.where(verdict2.num_accepted >= 1, drafts2[:, 0], verdict2.next_token)
    return first, second


WARPS = [
    SamplingParams(temperature=0.5),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=1.5),
    SamplingParams(temperature=1.0, top_k=8),
    SamplingParams(temperature=1.0, top_p=0.8),
    SamplingParams(temperature=0.7, top_k=20, top_p=0.9),
]


def synthetic(params: SamplingParams, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Warped target p [K+2, V] and a different warped draft q [K+1, V]."""
    gen = torch.Generator().manual_seed(seed)
    target_logits = 2.0 * torch.randn(K + 2, VOCAB, generator=gen)
    draft_logits = target_logits[: K + 1] + 1.5 * torch.randn(K + 1, VOCAB, generator=gen)
    return warp(target_logits, params), warp(draft_logits, params)


@pytest.mark.parametrize("params", WARPS, ids=lambda p: f"T{p.temperature}-k{p.top_k}-p{p.top_p}")
def test_emitted_tokens_follow_the_warped_target(params):
    p, q = synthetic(params, seed=11)
    first, second = simulate_two_tokens(p, q, torch.Generator().manual_seed(12))
    assert chi_square_p_value(first, p[0]) > ALPHA
    assert chi_square_p_value(second, p[1]) > ALPHA


def wrong_recovery(p, q):
    return p  # recovered token drawn from p instead of norm(max(0, p - q))


def wrong_unnormalised_subtraction(p, q):
    return (p - 0.5 * q).clamp_min(0)  # subtracts only half of q: too little mass moved


@pytest.mark.parametrize("wrong_residual", [wrong_recovery, wrong_unnormalised_subtraction])
def test_negative_control_wrong_residual_is_detected(monkeypatch, wrong_residual):
    monkeypatch.setattr(rejection, "residual", wrong_residual)
    p, q = synthetic(SamplingParams(temperature=1.0), seed=11)
    first, _ = simulate_two_tokens(p, q, torch.Generator().manual_seed(12))
    assert chi_square_p_value(first, p[0]) < NEGATIVE_ALPHA


def test_negative_control_draft_sampled_from_other_q_is_detected():
    """Verifying with a q other than the one the draft was sampled from breaks exactness."""
    p, q = synthetic(SamplingParams(temperature=1.0), seed=11)
    _, other_q = synthetic(SamplingParams(temperature=0.5), seed=99)
    gen = torch.Generator().manual_seed(12)
    drafts = sample(other_q[:K].expand(SAMPLES, K, VOCAB), gen)
    verdict = verify_chain(p[: K + 1].expand(SAMPLES, K + 1, VOCAB), q[:K].expand(SAMPLES, K, VOCAB), drafts, gen)
    first = torch.where(verdict.num_accepted >= 1, drafts[:, 0], verdict.next_token)
    assert chi_square_p_value(first, p[0]) < NEGATIVE_ALPHA


def test_the_tree_walk_on_a_chain_equals_the_chain_rule_at_temperature_0():
    """The served path verifies a chain as a width-one tree; at T = 0 (one-hot p and q) it must
    give exactly what the chain rule gives."""
    from specgrove.sampling import SamplingParams, warp
    from specgrove.tree import TokenTree
    from verifier.tree_verify import verify_tree

    torch.manual_seed(0)
    greedy = SamplingParams()
    for case in range(300):
        k, vocab = case % 6, 7
        logits = torch.randn(k + 1, vocab)
        best = logits.argmax(-1)
        # drafts that match the argmax for a random prefix, then (maybe) differ
        tokens = [int(best[i]) if torch.rand(()) < 0.7 else int(torch.randint(vocab, ())) for i in range(k)]
        q = torch.nn.functional.one_hot(torch.tensor(tokens, dtype=torch.long), vocab).float().reshape(k, vocab)
        verdict = verify_chain(warp(logits, greedy)[None], q[None], torch.tensor([tokens], dtype=torch.long).reshape(1, k),
                               torch.Generator().manual_seed(case))
        tree = TokenTree.from_lists(tokens, list(range(-1, k - 1)))
        walk = verify_tree(tree, logits, True, torch.Generator().manual_seed(case))
        assert (len(walk.accepted_tokens), walk.next_token) == (int(verdict.num_accepted[0]), int(verdict.next_token[0]))
