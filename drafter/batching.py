"""Batched drafting: the sessions drafting at once draw their next levels in one draft pass.

A round's tree grows as steps (``ModelDraftSession.grow``): it yields each ``Level`` it draws,
and each forward pass it needs as a ``Feed``. A session that wants its next level queues its
steps here; as at the verifier, no scheduler thread: the caller that finds the draft free
becomes the **leader**, gathers every waiting session (waiting a moment for the last pass's
sessions to come back), and advances them all on the compute thread until each has drawn its
next level or ended. The feeds met on the way run together (``feature_sequence.run_feeds``: one
pass per level across sessions, whatever each one's depth, cache length or tree); a draft
without batched passes (a Hugging Face model on its own cache) yields each pass as a ``Pass``,
run alone, so its sessions draw in turn. A lone session runs exactly as before.

What a level cost a session is the time of the advances it rode in: the batch's pass, shared."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Generator

import torch

from drafter.tree_growth import Level
from specgrove.compute import on_compute, on_compute_thread
from specgrove.batch_leader import BatchLeader
from specgrove.config import MAX_BATCH



@dataclass(eq=False)
class Steps:
    """One session's round in progress: its steps and what the last advance left."""

    key: str  # the session: one round of a session at a time
    steps: Generator
    item: object = None  # the Level drawn, or the Feed waiting to run
    ended: bool = False
    error: BaseException | None = None
    ms: float = 0.0  # time of the advances this round rode in
    rows: int = 0  # sessions in the last advance it rode in
    ready: bool = field(default=False, repr=False)  # the advance it waits for is done


class LevelBatcher:
    def __init__(self, max_batch: int = MAX_BATCH, metrics=None, min_pass_ms: float = 0.0):
        """min_pass_ms: every draft pass lasts at least this long (the leader sleeps the rest, off
        the compute thread), emulating a draft on a GPU, whose pass costs about the same for one
        session as for several; tests, benchmarks."""
        self.max_batch = max(1, max_batch)
        self.metrics = metrics
        self.min_pass_ms = min_pass_ms
        self._turns = BatchLeader()  # leading advances; ``out``: the last advance's sessions not back yet
        self._turn = self._turns.turn
        self._waiting: list[Steps] = []
        self._recent: dict[str, float] = {}  # sessions whose last round ended lately: when it ended
        self._pass_s = 0.0  # how long a draft pass takes (EWMA)

    def next(self, job: Steps) -> Level | None:
        """The round's next level, None when its tree is complete; its error is raised here."""
        if on_compute_thread():  # called from model work itself: no one else may run; go alone
            self._advance([job])  # (no min_pass_ms: nothing may sleep on the compute thread)
        else:
            self._queue(job)
        if job.error is not None:
            raise job.error
        return None if job.ended else job.item

    def forget(self, key: str) -> None:
        """The session is gone (released): no leader waits for it."""
        with self._turn:
            self._turns.out.pop(key, None)
            self._recent.pop(key, None)
            self._turn.notify_all()

    def close(self, job: Steps) -> None:
        """The caller leaves the round early: its steps end; no leader waits for it."""
        with self._turn:
            self._turns.out.pop(job.key, None)
            self._turn.notify_all()
        if not job.ended:
            job.ended = True
            on_compute(job.steps.close)

    def _queue(self, job: Steps) -> None:
        with self._turn:
            job.ready = False
            self._waiting.append(job)
            if self.metrics is not None:
                self.metrics.waiting.set(len(self._waiting))  # sessions waiting for a draft pass
            self._turns.arrive(job.key)
            self._turns.run_batches_until(lambda: job.ready, self._gather, self._take, self._run, self._ran)

    def _run(self, batch: list[Steps]) -> None:
        """Lead one advance (the turn released): the passes on the compute thread, then, with
        ``min_pass_ms``, the rest of each pass slept here (not on the compute thread)."""
        t0 = time.perf_counter()
        try:
            passes = on_compute(self._advance, batch)
            rest = passes * self.min_pass_ms / 1000 - (time.perf_counter() - t0)
            if rest > 0:
                time.sleep(rest)
                for j in batch:
                    j.ms += rest * 1000
        except BaseException as exc:  # noqa: BLE001 — not a round's own error: every round of the advance
            for j in batch:
                j.error = j.error or exc
            return
        if passes:  # (an advance that only ends rounds runs no pass)
            self._pass_s += 0.2 * ((time.perf_counter() - t0) / passes - self._pass_s)

    @property
    def pass_ms(self) -> float:
        """A draft pass lately (EWMA; 0 before the first)."""
        return self._pass_s * 1000

    def _ran(self, batch: list[Steps]) -> None:
        """Holding the turn: the advance's rounds have their levels; who is expected back."""
        now = time.monotonic()
        for j in batch:
            j.ready = True
        self._turns.out = {j.key: now for j in batch if not j.ended and j.error is None}
        self._recent.update((j.key, now) for j in batch if j.ended)

    def _gather(self) -> None:
        """Wait a little for the sessions likely to want a level now, so one early session does not
        draw alone and split the batch: the last advance's sessions coming back for their next
        level (up to three times their usual return time), and, when every waiting round is just
        starting, the sessions whose rounds ended lately (the verifier answers a batch's rounds
        together, so their next rounds start together). Never longer than half an advance.
        Called holding the turn."""
        now = time.monotonic()
        horizon = max(1.0, 20 * self._pass_s)
        self._recent = {k: t for k, t in self._recent.items() if now - t < horizon}
        starting = all(j.item is None for j in self._waiting)  # no level drawn yet this round

        def expected() -> bool:
            waiting = {j.key for j in self._waiting}
            if any(key not in waiting for key in self._turns.out):
                return True
            return starting and any(key not in waiting for key in self._recent)

        if not expected() or len(self._waiting) >= self.max_batch:
            return
        self._turns.wait_while(expected, 0.5 * self._pass_s if starting
                               else min(3 * self._turns.gap_s + 0.0005, 0.5 * self._pass_s))

    def _take(self) -> list[Steps]:
        batch, seen = [], set()
        for job in list(self._waiting):
            if job.key in seen or len(batch) == self.max_batch:
                continue
            batch.append(job)
            seen.add(job.key)
            self._waiting.remove(job)
        if self.metrics is not None:
            self.metrics.waiting.set(len(self._waiting))
        return batch

    def _advance(self, batch: list[Steps]) -> int:
        """On the compute thread: every job's steps until its next level or its end, the feeds
        met on the way run together. The number of batched passes run."""
        from drafter.feature_sequence import Feed, run_feeds

        t0, passes = time.perf_counter(), 0
        with torch.inference_mode():
            for job in batch:
                self._send(job, None)
            while True:
                live = [j for j in batch if not j.ended and j.error is None and not isinstance(j.item, Level)]
                if not live:
                    break
                feeding = [j for j in live if isinstance(j.item, Feed)]
                alone = [j for j in live if not isinstance(j.item, Feed)]
                if feeding:  # one pass: a worker's sessions share its one draft
                    try:
                        results = run_feeds([j.item for j in feeding])
                    except Exception as exc:  # noqa: BLE001 — every round of the failed pass gets it
                        for j in feeding:
                            j.error = exc
                        results = []
                    else:
                        passes += 1
                        if self.metrics is not None:
                            self.metrics.batch_size.observe(len(feeding))
                    for j, result in zip(feeding, results):
                        self._send(j, result)
                for j in alone:  # a draft that runs its own passes: one session at a time
                    try:
                        result = j.item.run()
                    except Exception as exc:  # noqa: BLE001 — this round's
                        j.error = exc
                        continue
                    passes += 1
                    if self.metrics is not None:
                        self.metrics.batch_size.observe(1)
                    self._send(j, result)
        elapsed = (time.perf_counter() - t0) * 1000
        for job in batch:
            job.ms += elapsed
            job.rows = len(batch)
        return passes

    @staticmethod
    def _send(job: Steps, reply) -> None:
        try:
            job.item = job.steps.send(reply)
        except StopIteration:
            job.ended, job.item = True, None
        except BaseException as exc:  # noqa: BLE001 — raised to this round's caller
            job.error = exc
