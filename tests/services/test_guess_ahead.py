"""Guessed draft-ahead served over a slow link, on real loopback gRPC and a real Redis,
with the tiny feature draft: while the verifier checks a chain, the drafter draws the next round
under each likely verdict (drafter/guess.py) and sends the guesses (``Verifier.Guess``); the
verifier starts the one that matches as soon as the verdict is in.

Exactness: at T = 0 the tokens equal the target's greedy tokens; at T > 0 the served output
distribution equals the target's (a chi-square test over the first tokens, seeded), with rounds
taken from guesses."""

from __future__ import annotations

import pytest

from orchestrator.engine import SpeculativeEngine
from specgrove.sampling import SamplingParams
from specgrove_apps.client import Client
from tests.services.conftest import InProcessStack, in_memory_spans

PROMPT = "my name is"
DELAY_MS = 20.0


@pytest.fixture(scope="module")
def exporter():
    return in_memory_spans()


def _count(registry, name: str, outcome: str) -> float:
    return registry.get_sample_value(name, {"outcome": outcome}) or 0


@pytest.mark.parametrize("selection", [{}, {"guess_count": 5}, {"guess_width": 1}, {"guess_width": 2}],
                         ids=["count-10", "count-5", "width-1", "width-2"])
def test_guessed_rounds_are_verified_at_once_and_change_no_token(exporter, tiny_target, tiny_feature_drafter,
                                                                  redis_server, selection):
    ids = tiny_target.encode(PROMPT)
    expected = SpeculativeEngine(tiny_target).generate(ids, SamplingParams(max_new_tokens=48)).token_ids
    exporter.clear()
    stack = InProcessStack(tiny_target, tiny_feature_drafter, redis_server.url, mode="chain", draft_len=3,
                           link_delay_ms=DELAY_MS, min_pass_ms=60, guess_ahead=True, goodput=False,
                           **selection)
    try:
        out = Client(stack.address).generate(token_ids=ids, max_new_tokens=48, draft_len=3)
        drafter = stack.drafter_worker.metrics.registry
        guessed = {o: _count(drafter, "specgrove:draft_guessed_rounds_total", o) for o in ("hit", "miss", "late")}
    finally:
        stack.stop()
    assert out.token_ids == expected  # T = 0: the target's own greedy tokens
    rounds = [s for s in exporter.get_finished_spans() if s.name == "round"]
    from_guesses = [r for r in rounds if r.attributes.get("specgrove.guessed")]
    print(guessed, len(rounds), len(from_guesses))
    assert guessed["hit"] >= 1 and len(from_guesses) == guessed["hit"]


N = 500  # seeded requests
TOKENS = 7  # per request: round 1 is a plain step (no features yet), round 2 a chain, later rounds may be guessed
TESTED = (4, 7)  # the positions (1-based) whose marginals are tested
MAX_TV = 0.15
CASE = "T1-k6-p0.9"


def feature_drafter_for(target):
    """A feature draft on the statistical tests' tiny target: its layer copies the target's last
    (untrained), so it agrees often and is rejected often."""
    import torch

    from drafter import feature_model as fd
    from drafter.feature_sequence import FeatureDrafter, FeatureDraftModel

    c = fd.FeatureDraftConfig.from_target(target.model.config, "tiny", target.vocab_hash, list(range(target.vocab_size)))
    torch.manual_seed(0)
    return FeatureDrafter(FeatureDraftModel(fd.init_from_target(c, target.model), "tiny-feature"), top_n=6)


def test_guessed_rounds_keep_the_target_distribution(tmp_path_factory, redis_server):
    """N seeded requests of 7 tokens at T = 1, top-k 6, top-p 0.9, chains of 4 with guesses on:
    the marginals of tokens 4 and 7 pass Pearson's chi-square against the target's exact
    distribution (p > 1e-3; each test detects any shift of TV 0.15 with 90% probability). Tokens 4
    and 7 come from guessed rounds in a good share of the requests (asserted). Four clients send
    them at once (each session's guesses wait for its own verdict only); a seeded request's
    output does not depend on what else the server does, so the sample is the same N draws."""
    from concurrent.futures import ThreadPoolExecutor

    from tests import exactness as ex
    from tests.stats import ALPHA, chi_square_p_value, detectable_tv

    target, _ = ex.load_models(tmp_path_factory.mktemp("guess_exactness"))
    stack = InProcessStack(target, feature_drafter_for(target), redis_server.url, mode="chain", draft_len=4,
                           min_pass_ms=20, guess_ahead=True, stop_policy="static", goodput=False)
    client = Client(stack.address)
    try:
        with ThreadPoolExecutor(4) as pool:
            outputs = list(pool.map(lambda seed: client.generate(token_ids=target.encode(ex.PROMPT), seed=seed,
                                                                 max_new_tokens=TOKENS, **ex.SAMPLING[CASE]), range(N)))
        drafter = stack.drafter_worker.metrics.registry
        hits = _count(drafter, "specgrove:draft_guessed_rounds_total", "hit")
        misses = _count(drafter, "specgrove:draft_guessed_rounds_total", "miss")
    finally:
        client.close()
        stack.stop()
    print(f"guessed rounds: {hits} hit, {misses} missed")
    assert hits >= N // 4  # the verifier ran guessed rounds
    assert sum(0 < c.stats.num_accepted < c.stats.num_drafted for o in outputs for c in o.chunks) >= N // 4
    exact = ex.exact_distributions(target, target.encode(ex.PROMPT), SamplingParams(**ex.SAMPLING[CASE]), TOKENS)
    vocab = target.vocab_size
    for position in TESTED:
        cells = [o.token_ids[position - 1] if len(o.token_ids) >= position else vocab for o in outputs]
        assert detectable_tv(exact.marginals[position - 1], N) < MAX_TV
        assert chi_square_p_value(cells, exact.marginals[position - 1]) > ALPHA, position


def test_concurrent_sessions_with_guesses_each_get_their_own_greedy_tokens(tiny_target, tiny_feature_drafter,
                                                                            redis_server):
    """Four clients at once, guessing on: each session's guesses wait for its own verdict only,
    and every output is its prompt's greedy continuation (no token lost, duplicated or crossed)."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["my name is", "the cat sat on", "hello there, general", "once upon a time"]
    expected = [SpeculativeEngine(tiny_target).generate(tiny_target.encode(p), SamplingParams(max_new_tokens=40))
                .token_ids for p in prompts]
    stack = InProcessStack(tiny_target, tiny_feature_drafter, redis_server.url, mode="chain", draft_len=3,
                           link_delay_ms=DELAY_MS, min_pass_ms=40, guess_ahead=True, goodput=False)
    try:
        def run(prompt: str):
            return Client(stack.address).generate(token_ids=tiny_target.encode(prompt), max_new_tokens=40,
                                                  draft_len=3).token_ids

        with ThreadPoolExecutor(len(prompts)) as pool:
            outputs = list(pool.map(run, prompts))
        hits = _count(stack.drafter_worker.metrics.registry, "specgrove:draft_guessed_rounds_total", "hit")
    finally:
        stack.stop()
    assert outputs == expected
    assert hits >= len(prompts)  # guessed rounds were taken while other sessions' rounds were in flight
