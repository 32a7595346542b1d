"""Batching without a scheduler thread, for the verifier (rounds) and the drafter (tree levels).

Callers queue their work and wait. The caller that finds the model free becomes the **leader**:
it gathers what waits (after a bounded wait for the callers it expects back), runs it as one
batch with the turn released, so later callers can queue meanwhile, and then hands over to one of
them. A lone caller leads at once, so one session pays nothing."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class BatchLeader:
    def __init__(self) -> None:
        self.turn = threading.Condition()
        self.busy = False  # a leader is gathering or running a batch
        self.gap_s = 0.0  # how long a caller of the last batch takes to come back (EWMA)
        self.out: dict[str, float] = {}  # the last batch's callers not back yet: when they left

    def arrive(self, key: str) -> None:
        """Holding the turn: the caller ``key`` queued work (its return time is learned); a
        gathering leader may be waiting for it."""
        left = self.out.pop(key, None)
        if left is not None:
            self.gap_s += 0.2 * (time.monotonic() - left - self.gap_s)
        self.turn.notify_all()

    def wait_while(self, expected: Callable[[], bool], seconds: float) -> None:
        """Holding the turn: wait up to ``seconds`` while ``expected()`` (someone is still to come)."""
        deadline = time.monotonic() + seconds
        while expected() and time.monotonic() < deadline:
            self.turn.wait(deadline - time.monotonic())

    def run_batches_until(self, done: Callable[[], bool], gather: Callable[[], None], take: Callable[[], list[T]],
                   run: Callable[[list[T]], None], finish: Callable[[list[T]], None] = lambda batch: None) -> None:
        """Holding the turn, until ``done()``: wait while another leads; else lead: ``gather()``
        and ``take()`` a batch holding the turn, ``run(batch)`` without it, ``finish(batch)``
        holding it again (whatever ``run`` raised)."""
        while not done():
            if self.busy:
                self.turn.wait()
                continue
            self.busy = True
            gather()
            batch = take()
            self.turn.release()
            try:
                run(batch)
            finally:
                self.turn.acquire()
                self.busy = False
                finish(batch)
                self.turn.notify_all()
