"""Which orchestrator runs a worker serves for each session, and which it refuses.

- A run's ``Release`` can overtake one of its own rounds (the client cancels mid-round; the release
  travels on another connection, or the round still waits in the worker's queue). That late round
  must not re-open a cache nobody frees, so a worker refuses rounds of a released run.
- A resumed session is a new run (another orchestrator, after the first died holding the lease).
  Its first round here takes the session over: the old run's rounds are refused like a released one's, and the
  round order starts afresh. The old run may have verified or drafted rounds here that it never
  committed (a round run ahead, a verdict lost with its orchestrator), so the new run's first round
  can have a lower step than the last one seen; refusing it as stale would fail the resume.
  Redis's lease makes the new run the only writer, so the old run has nothing left to do here.
"""

from __future__ import annotations

from collections import OrderedDict

from specgrove.errors import StaleRound

CAPACITY = 4096  # released runs remembered; a late round arrives within seconds of its release


class ReleasedRuns:
    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._runs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._owners: OrderedDict[str, str] = OrderedDict()  # session -> the run its rounds here belong to

    def add(self, session_id: str, run: str) -> None:
        """Remember (session, run); an empty run (an in-process engine, an old client) refuses nothing."""
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

    def admit(self, session_id: str, run: str, step: int) -> bool:
        """Check the round (``check``) and record its run as the session's; True when that run takes
        the session over from another one, whose rounds are refused from now on (the caller starts the
        session's round order afresh and drops what the old run left)."""
        self.check(session_id, run, step)
        if not run:
            return False
        previous = self._owners.pop(session_id, None)
        self._owners[session_id] = run
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)
        if previous is None or previous == run:
            return False
        self.add(session_id, previous)
        return True

    def owns(self, session_id: str, run: str) -> bool:
        """Whether a ``Release`` of ``run`` frees the session's cache: not when another run took it over."""
        owner = self._owners.get(session_id)
        return not run or owner is None or owner == run
