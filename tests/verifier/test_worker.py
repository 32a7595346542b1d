"""The verifier worker's KV budget: past it, least recently used sessions are evicted, and an
evicted session's next round re-prefills from its context with the same result."""

from __future__ import annotations

from specgrove.sampling import SamplingParams
from specgrove.round import Round
from verifier.worker import VerifierWorker, empty_tree

PARAMS = SamplingParams(max_new_tokens=8)


def test_sessions_past_the_kv_budget_are_evicted_and_re_prefill(tiny_target):
    budgeted = VerifierWorker(tiny_target, keep_features=False, max_kv_tokens=30)
    free = VerifierWorker(tiny_target, keep_features=False)
    a, b = tiny_target.encode("the cat sat on the mat"), tiny_target.encode("a b c d e f g")
    assert len(a) + len(b) > 30
    for worker in (budgeted, free):
        worker.verify(Round("a", 1, tuple(a), PARAMS, 0), empty_tree())
        worker.verify(Round("b", 1, tuple(b), PARAMS, 0), empty_tree())
    assert list(budgeted._sessions) == ["b"] and list(free._sessions) == ["a", "b"]  # "a" was least recent
    assert budgeted.metrics.registry.get_sample_value("specgrove:kv_cache_evictions_total") == 1
    again = budgeted.verify(Round("a", 2, tuple(a + [5]), PARAMS, 0), empty_tree())[0]  # re-prefilled from its context
    assert again.next_token == free.verify(Round("a", 2, tuple(a + [5]), PARAMS, 0), empty_tree())[0].next_token


def test_a_round_reports_the_rows_its_pass_fed(tiny_target):
    """What the planner learns the verify-cost curve from: a first round prefills its whole
    context; the next feeds only the token that is new."""
    worker = VerifierWorker(tiny_target, keep_features=False)
    context = tiny_target.encode("the cat sat on the mat")
    first, _, _, rows = worker.verify(Round("a", 1, tuple(context), PARAMS, 0), empty_tree())
    assert rows == len(context)
    _, ms, _, rows = worker.verify(Round("a", 2, tuple(context + [first.next_token]), PARAMS, 0), empty_tree())
    assert rows == 1 and ms > 0


def test_passes_run_on_the_compute_thread_whichever_thread_submits_them(tiny_target):
    """Every pass runs on specgrove.compute's one thread (one OpenMP team per process), whether
    the round came from the main thread or from several client threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    from specgrove.compute import on_compute_thread

    worker = VerifierWorker(tiny_target, keep_features=False)
    forward, where = worker.target.forward, []

    def spied(*args, **kwargs):
        where.append(on_compute_thread())
        return forward(*args, **kwargs)

    worker.target.forward = spied
    context = tiny_target.encode("the cat sat on the mat")
    worker.verify(Round("main", 1, tuple(context), PARAMS, 0), empty_tree())
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: worker.verify(Round(s, 1, tuple(context), PARAMS, 0), empty_tree()), ["a", "b", "c", "d"]))
    assert len(where) >= 2 and all(where)
