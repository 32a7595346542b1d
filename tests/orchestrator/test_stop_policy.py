"""AdaEDL's stopping rule and λ controller, the baseline policies, and exactness with them on."""

import math

import pytest
import torch

from drafter.tree_growth import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from orchestrator.sequoia import SequoiaTable
from orchestrator.stop_policy import AdaEDLConfig, AdaEDLPolicy, HeuristicPolicy, MaxConfidencePolicy, make_policy
from specgrove.budget import DraftBudget, entropy, entropy_bound
from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.sampling import SamplingParams
from tests.orchestrator.test_engine import exact_two_token_marginals, hf_greedy
from tests.stats import ALPHA, chi_square_p_value


@pytest.mark.parametrize("gamma, lam", [(0.2, 0.5), (0.2, 0.9), (1.0, 0.3), (0.05, 0.1)])
def test_stop_iff_entropy_exceeds_threshold(gamma, lam):
    budget = DraftBudget(8, gamma=gamma, lam=lam)
    threshold = (1 - lam) ** 2 / gamma
    gen = torch.Generator().manual_seed(0)
    for scale in [0.1, 0.5, 1, 2, 4, 8]:
        q = torch.softmax(scale * torch.randn(50, generator=gen), dim=-1)
        h = entropy(q)
        if abs(h - threshold) < 1e-6:
            continue
        assert budget.stops(q.log(), q, greedy=False) == (h > threshold)
        assert (entropy_bound(h, gamma) < lam) == (h > threshold)


def test_entropy_edge_cases():
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    assert entropy(one_hot) == 0.0
    assert entropy(torch.full((4,), 0.25)) == pytest.approx(math.log(4))
    assert not DraftBudget(4, gamma=0.2, lam=0.99).stops(torch.zeros(3), one_hot, greedy=False)  # H = 0: bound 1
    assert not DraftBudget(4, min_confidence=0.9).stops(torch.zeros(3), one_hot, greedy=False)


def test_greedy_reads_the_plain_softmax_not_the_one_hot():
    flat_logits = torch.zeros(100)  # uniform draft: H = log 100 = 4.6 nats
    one_hot = torch.nn.functional.one_hot(torch.tensor(0), 100).float()
    assert DraftBudget(4, gamma=0.2, lam=0.5).stops(flat_logits, one_hot, greedy=True)
    assert DraftBudget(4, min_confidence=0.5).stops(flat_logits, None, greedy=True)


def test_lambda_falls_when_everything_is_accepted_and_rises_when_nothing_is():
    generous = AdaEDLPolicy(8, AdaEDLConfig(lam=0.5))
    strict = AdaEDLPolicy(8, AdaEDLConfig(lam=0.5))
    trace = []
    for _ in range(200):
        generous.observe(drafted=4, accepted=4)
        strict.observe(drafted=4, accepted=0)
        trace.append(generous.lam)
    assert all(b <= a for a, b in zip(trace, trace[1:]))  # monotone for a constant signal
    assert generous.lam == pytest.approx(0.05) and strict.lam == pytest.approx(0.95)  # clipped at the bounds
    at_target = AdaEDLPolicy(8, AdaEDLConfig(lam=0.5))
    for _ in range(50):
        at_target.observe(drafted=4, accepted=2)  # exactly α* = 0.5
    assert at_target.lam == pytest.approx(0.5)
    rounds_without_draft = AdaEDLPolicy(8)
    rounds_without_draft.observe(0, 0)
    assert rounds_without_draft.lam == 0.5


def test_heuristic_schedule_matches_transformers():
    policy = HeuristicPolicy(max_len=8, start=4)
    policy.observe(4, 4)
    assert policy.budget().max_len == 6
    policy.observe(6, 6)
    assert policy.budget().max_len == 8  # capped
    for _ in range(20):
        policy.observe(policy.k, 0)
    assert policy.budget().max_len == 1  # floor


def test_max_confidence_budget():
    budget = MaxConfidencePolicy(6, min_confidence=0.5).budget()
    assert budget.max_len == 6 and budget.min_confidence == 0.5 and budget.gamma is None


def test_bad_policy_parameters():
    with pytest.raises(InvalidArgument, match="stop_policy: must be one of adaedl"):
        make_policy("oracle", 4)
    with pytest.raises(OutOfRange, match="adaedl_gamma"):
        make_policy("adaedl", 4, gamma=0.0)
    with pytest.raises(OutOfRange, match="adaedl_lambda"):
        make_policy("adaedl", 4, lam=1.5)


def eager_adaedl(max_len):
    return AdaEDLPolicy(max_len, AdaEDLConfig(lam=0.9))  # stops often: short, varying drafts


@pytest.mark.parametrize("tree", [False, True])
def test_greedy_identity_under_adaedl(tiny_target, tiny_draft, tree):
    prompt_ids = tiny_target.encode("the cat sat on the mat")
    plan = SequoiaTable([0.5, 0.2, 0.1]).shape(8, 4) if tree else None
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), draft_len=6, tree=plan, policy_factory=eager_adaedl)
    result = engine.generate(prompt_ids, SamplingParams(max_new_tokens=100))
    assert result.token_ids == hf_greedy(tiny_target, prompt_ids, 100)
    full = plan.size if tree else 6
    assert any(r.num_drafted < full for r in result.rounds[:-1])  # AdaEDL really stopped drafting early
    assert all(r.lam is not None for r in result.rounds)


def test_distribution_is_exact_under_adaedl(tiny_target, tiny_draft):
    """As the foundation's distribution test, with AdaEDL stopping drafts early (chi-square, p > 1e-3)."""
    params = SamplingParams(temperature=1.0)
    prompt_ids = tiny_target.encode("the cat sat")
    first_p, second_p = exact_two_token_marginals(tiny_target, prompt_ids, params)
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), draft_len=4, policy_factory=eager_adaedl)
    firsts, seconds, lengths = [], [], set()
    for seed in range(3000):
        result = engine.generate(prompt_ids, SamplingParams(temperature=1.0, seed=seed, max_new_tokens=2))
        firsts.append(result.token_ids[0])
        seconds.append(result.token_ids[1] if len(result.token_ids) > 1 else tiny_target.vocab_size)
        lengths.update(r.num_drafted for r in result.rounds)
    assert len(lengths) > 1
    assert chi_square_p_value(firsts, first_p) > ALPHA
    assert chi_square_p_value(seconds, second_p) > ALPHA
