"""Speculative sampling through the in-process engine is distributed exactly as the target's own
sampling, well past the first round.

Each case draws N seeded generations of 5 tokens (one ``SamplingParams.seed`` per generation) on
tiny models (tests/exactness.py: a vocabulary of 11, the draft a noisy copy of the target) and
tests the joint distribution of tokens 1 and 2 and the marginal of token 5 against the target's
own, computed exactly by enumeration: Pearson's chi-square, p > ALPHA = 1e-3 each. The first
round drafts a chain of 4 (or a tree of depth 4), so token 5 comes after rejections mid-chain or
mid-tree, residual sampling and KV cache trims; every case asserts from the engine's statistics
that those happened. Negative controls, p < NEGATIVE_ALPHA = 1e-6: the same samples against the
draft's exact distribution, and each family run with a broken verifier (on rejection it resamples
from p instead of the residual norm(max(0, p − q))). N, bounds and power: docs/exactness.md.
"""

from __future__ import annotations

import pytest

from drafter.tree_growth import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from orchestrator.rounds import Speculation
from orchestrator.sequoia import SequoiaTable
from orchestrator.stop_policy import AdaEDLConfig, AdaEDLPolicy
from specgrove.sampling import SamplingParams
from tests import exactness as ex

N = 1000  # seeded generations per case
N_BROKEN = 500  # per broken-verifier control: enough to fail by a wide margin
MAX_TV = 0.12  # each test detects any shift of this total variation with ≥ 90% probability
DRAFT_LEN = 4  # chain: the first round drafts 4 tokens (the 5th is its bonus or recovered token)
TREE_SHAPE = SequoiaTable([0.5, 0.2, 0.1, 0.05]).shape(8, 4)  # 8 nodes, depth 4, 3 children at the root
TREE_TOP_N = 6  # the tree's q is truncated to its top 6 tokens (exactness must hold regardless)
# AdaEDL's initial λ per case: the draft's entropy grows with T, so λ sits where some chains stop
# early and others run to their limit (a branch stops when H(q) > (1 − λ)² / γ, γ = 0.2)
ADAEDL_LAMBDA = {"T0.5": 0.5, "T1-k6-p0.9": 0.5, "T1.5": 0.38}
BROKEN_CASE = "T1-k6-p0.9"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return ex.load_models(tmp_path_factory.mktemp("exactness"))


def generate(engine: SpeculativeEngine, case: str, n: int):
    """n seeded generations: (outputs, per generation its rounds as (drafted, accepted, emitted),
    every drafting round's verification walk)."""
    prompt = engine.target.encode(ex.PROMPT)
    outputs, rounds, verdicts = [], [], []
    for seed in range(n):
        params = SamplingParams(**ex.SAMPLING[case], seed=seed, max_new_tokens=ex.MAX_NEW_TOKENS)
        result = engine.generate(prompt, params)
        outputs.append(result.token_ids)
        rounds.append([(r.num_drafted, r.num_accepted, r.num_emitted) for r in result.rounds])
        verdicts += [r.verdict for r in result.rounds if r.num_drafted]
    return outputs, rounds, verdicts


def generate_together(engine: SpeculativeEngine, case: str, n: int, sessions: int):
    """generate(), with ``sessions`` generations running at once on threads: their verify rounds
    share the verifier's forward passes. Also returns the mean rounds per pass."""
    from concurrent.futures import ThreadPoolExecutor

    prompt = engine.target.encode(ex.PROMPT)

    def one(seed: int):
        return engine.generate(prompt, SamplingParams(**ex.SAMPLING[case], seed=seed, max_new_tokens=ex.MAX_NEW_TOKENS))

    with ThreadPoolExecutor(sessions) as pool:
        results = list(pool.map(one, range(n)))
    registry = engine.verifier.metrics.registry
    batch = registry.get_sample_value("specgrove:batch_size_sum") / registry.get_sample_value("specgrove:batch_size_count")
    return ([r.token_ids for r in results], [[(s.num_drafted, s.num_accepted, s.num_emitted) for s in r.rounds]
                                             for r in results], batch)


def chain_engine(models) -> SpeculativeEngine:
    return SpeculativeEngine(models[0], ModelDrafter(models[1]), draft_len=DRAFT_LEN)


def tree_engine(models) -> SpeculativeEngine:
    return SpeculativeEngine(models[0], ModelDrafter(models[1], top_n=TREE_TOP_N), tree=TREE_SHAPE)


def adaedl_engine(models, lam: float) -> SpeculativeEngine:
    def policy(max_len: int) -> AdaEDLPolicy:  # one per generation, λ adapting from lam
        return AdaEDLPolicy(max_len, AdaEDLConfig(lam=lam))

    return SpeculativeEngine(models[0], ModelDrafter(models[1]), draft_len=DRAFT_LEN, policy_factory=policy)


def chains(rounds) -> list[ex.ChainRound]:
    return [r for generation in rounds for r in ex.chain_rounds(generation, DRAFT_LEN)]


@pytest.mark.parametrize("case", ["T0.5-k5", "T1", "T1.5-p0.95"])
def test_chain_output_is_exact_after_rejections_mid_chain(models, case):
    outputs, rounds, _ = generate(chain_engine(models), case, N)
    rounds = chains(rounds)
    assert sum(r.rejected_mid_chain for r in rounds) >= N // 10
    assert not any(r.stopped_early for r in rounds)  # a static policy drafts every token it may
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)


@pytest.mark.parametrize("case", ["T1", "T1-k6-p0.9"])
def test_chain_output_is_exact_when_sessions_share_verify_passes(models, case):
    """Continuous batching: 8 generations at a time, their rounds verified together."""
    # chains pinned at 4 (goodput would switch them off: 8 sessions' draft levels outweigh the
    # tiny target's pass), each pass as slow as a large model's so that the sessions' rounds meet
    engine = SpeculativeEngine(models[0], ModelDrafter(models[1]),
                               speculation=Speculation("chain", DRAFT_LEN, adaptive=False))
    engine.verifier.min_pass_ms = 10
    outputs, rounds, batch = generate_together(engine, case, N, sessions=8)
    assert batch > 1.5  # rounds of several sessions in one pass
    assert sum(r.rejected_mid_chain for r in chains(rounds)) >= N // 10
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)


@pytest.mark.parametrize("case", ["T0.5", "T1-p0.9", "T1.5"])
def test_tree_output_is_exact_after_rejections_mid_tree(models, case):
    outputs, _, verdicts = generate(tree_engine(models), case, N)
    assert sum(map(ex.rejected_mid_tree, verdicts)) >= N // 10  # accepted part-way, then rejected
    assert sum(len(r.accepted_tokens) >= 3 for r in verdicts) >= N // 10  # paths of depth ≥ 3 accepted
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)


@pytest.mark.parametrize("case", ["T0.5", "T1-k6-p0.9", "T1.5"])
def test_adaedl_output_is_exact_when_chains_stop_early(models, case):
    outputs, rounds, _ = generate(adaedl_engine(models, ADAEDL_LAMBDA[case]), case, N)
    rounds = chains(rounds)
    assert sum(r.stopped_early for r in rounds) >= N // 10  # the entropy rule ended chains before their limit
    assert sum(r.drafted == r.allowed >= 3 for r in rounds) >= N // 10  # and let others run to it
    assert sum(r.rejected_mid_chain for r in rounds) >= N // 20
    ex.assert_exact(outputs, *ex.exact_pair(*models, case), models[0].vocab_size, MAX_TV)


@pytest.mark.parametrize("family", ["chain", "tree", "adaedl"])
def test_a_verifier_that_skips_the_residual_fails(models, monkeypatch, family):
    """On rejection, resample from p rather than norm(max(0, p − q)): the output drifts towards
    the draft's likely tokens, and the same tests must catch it."""
    monkeypatch.setattr("verifier.rejection.residual", lambda p, q: p)
    monkeypatch.setattr("verifier.tree_verify.residual", lambda p, q: p)
    engine = {"chain": lambda: chain_engine(models), "tree": lambda: tree_engine(models),
              "adaedl": lambda: adaedl_engine(models, ADAEDL_LAMBDA[BROKEN_CASE])}[family]()
    outputs, _, _ = generate(engine, BROKEN_CASE, N_BROKEN)
    ex.assert_not_exact(outputs, ex.exact_pair(*models, BROKEN_CASE)[0], models[0].vocab_size)
