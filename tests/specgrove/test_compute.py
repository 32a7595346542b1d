"""The compute thread: model work from any thread runs on one thread, under the caller's modes."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from specgrove.compute import compute_iter, on_compute, on_compute_thread


def test_calls_from_many_threads_run_on_one_thread_and_nested_calls_run_inline():
    def where():
        return threading.get_ident(), on_compute(threading.get_ident)  # nested: inline, no deadlock

    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(lambda _: (threading.get_ident(), *on_compute(where)), range(8)))
    callers = {caller for caller, _, _ in seen} | {threading.get_ident()}
    (compute,) = {outer for _, outer, _ in seen}
    assert compute not in callers
    assert all(inner == compute for _, _, inner in seen)
    assert not on_compute_thread() and on_compute(on_compute_thread)


def test_the_callers_grad_inference_modes_and_thread_count_travel_with_the_call():
    weight = torch.ones(3, requires_grad=True)
    assert on_compute(lambda: (weight * 2).sum().requires_grad)
    with torch.no_grad():
        assert not on_compute(lambda: (weight * 2).sum().requires_grad)
    with torch.inference_mode():
        assert on_compute(lambda: torch.ones(2).is_inference())
    assert not on_compute(lambda: torch.ones(2).is_inference())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert on_compute(torch.get_num_threads) == 1
        torch.set_num_threads(2)
        assert on_compute(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(before)


def test_an_exception_reaches_the_caller_and_the_thread_keeps_serving():
    with pytest.raises(ZeroDivisionError):
        on_compute(lambda: 1 / 0)
    assert on_compute(lambda: 41 + 1) == 42


def test_compute_iter_advances_the_generator_there_one_item_at_a_time_and_closes_it():
    log = []

    def levels():
        try:
            for i in range(3):
                log.append(("made", i, on_compute_thread()))
                yield i
        finally:
            log.append(("closed", on_compute_thread()))

    items = compute_iter(levels())
    assert next(items) == 0 and log == [("made", 0, True)]  # lazily: one level per step
    assert next(items) == 1
    items.close()
    assert log[-1] == ("closed", True)
    assert list(compute_iter(levels())) == [0, 1, 2]
