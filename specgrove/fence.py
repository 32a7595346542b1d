"""Which orchestrator runs a worker has released: a run's ``Release`` can overtake one of its own
rounds (the client cancels mid-round; the release travels on another connection, or the round
still waits in the worker's queue). That late round must not re-open a cache nobody frees, so a
worker refuses rounds of a released run. A resumed session is a new run: its rounds are served."""

from __future__ import annotations

from collections import OrderedDict

from specgrove.errors import StaleRound

CAPACITY = 4096  # released runs remembered; a late round arrives within seconds of its release


class ReleasedRuns:
    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._runs: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, session_id: str, run: str) -> None:
        """Remember (session, run); an empty run (an in-process engine, an old client) fences nothing."""
        if not run:
            return
        self._runs[(session_id, run)] = None
        self._runs.move_to_end((session_id, run))
        while len(self._runs) > self.capacity:
            self._runs.popitem(last=False)

    def check(self, session_id: str, run: str, step: int) -> None:
        """Raise StaleRound if this round belongs to a run released here."""
        if run and (session_id, run) in self._runs:
            raise StaleRound(f"session {session_id}: round {step} came after its run was released here")
