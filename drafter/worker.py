"""The drafter worker's logic, free of gRPC: per-session draft state (LRU) and a round's tree
grown level by level. A model drafter grows the planner's shape under the round's budget; the
n-gram drafter proposes one chain with one-hot q."""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterator

from drafter.batching import LevelBatcher, Steps
from drafter.guess import Guess, GuessSelection, guess_steps
from drafter.tree_growth import Level, ModelDrafter, one_hot_chain
from specgrove.budget import DraftBudget
from specgrove.compute import on_compute
from specgrove.config import MAX_BATCH
from specgrove.errors import StaleRound
from specgrove.run_ownership import ReleasedRuns
from specgrove.grammar import for_session
from specgrove.metrics import WorkerMetrics
from specgrove.round import RecentMin, Round, RoundTiming
from specgrove.sampling import DRAFT_STREAM, round_generator
from specgrove.tree import VerifyResult, depths_of

MAX_SESSIONS = 64


class DrafterWorker:
    def __init__(self, drafter, max_sessions: int = MAX_SESSIONS, text=None, max_batch: int = MAX_BATCH,
                 min_pass_ms: float = 0.0, guesses: GuessSelection = GuessSelection()):
        """text: the target's TextCodec, whose tokenizer reads a request's grammar (model drafts
        fall back to their own tokenizer; without one, q is not masked: still exact).
        max_batch: the most sessions whose levels share one draft pass (1 turns batching off).
        min_pass_ms: every draft pass lasts at least this long (a draft on a GPU; tests, benchmarks).
        guesses: which verdicts guessed draft-ahead guesses each round."""
        self.guess_selection = guesses
        self.drafter = drafter
        self.text = text or getattr(drafter, "model", None)
        self.name = drafter.name
        self.vocab_size = drafter.vocab_size
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, object] = OrderedDict()
        self._steps: dict[str, int] = {}  # session -> its latest round here
        self._released = ReleasedRuns()
        self.lock = threading.RLock()  # the sessions' bookkeeping (passes: the batcher and the compute thread)
        self.metrics = WorkerMetrics("draft", max_sessions)
        self.batcher = LevelBatcher(max_batch, self.metrics, min_pass_ms)
        self.draining = False  # told to stop: orchestrators place no new sessions here
        self._last_round = float("-inf")
        self._links: dict[str, RecentMin] = {}  # verifier -> a round's time on the way there and back

    def busy(self, quiet_s: float = 1.0) -> bool:
        """A round was drawn here in the last ``quiet_s`` (a draining drafter waits until none is)."""
        return time.monotonic() - self._last_round < quiet_s

    def load_report(self) -> dict:
        """What orchestrators route by (``WorkerLoad``): sessions, its draft pass, its links."""
        return {"sessions": len(self._sessions), "max_sessions": self.max_sessions, "draining": self.draining,
                "pass_ms": self.batcher.pass_ms,
                "link_ms": {verifier: link.ms for verifier, link in list(self._links.items())}}

    def observe_link(self, verifier: str, timing: RoundTiming) -> None:
        """A round verified by ``verifier``: its time beyond the draft and verify passes (the link
        both ways, and the verifier's queue, which the least of the recent rounds leaves out)."""
        self._links.setdefault(verifier, RecentMin()).add(timing.round_ms - timing.draft_ms - timing.verify_ms)

    @property
    def needs_features(self) -> bool:
        """A feature-level draft: it reads the target's features of the confirmed context."""
        return getattr(self.drafter, "needs_features", False)

    def levels(self, round: Round, shape_parents: list[int], budget: DraftBudget,
               timing: RoundTiming | None = None) -> Iterator[Level]:
        """The round's tree, one level at a time. Sessions drafting at once draw their levels
        together (``batcher``: one draft pass per level across them); one session's rounds never
        overlap, the orchestrator runs them in order. A feature-level draft reads the features
        ``prefetch_features`` brought in before. ``timing``: adds ``draft_ms``, the time of the
        draft passes the levels rode in (shared with the sessions in them), and ``draft_rows``,
        the most sessions in one.

        A round older than the session's latest is refused (StaleRound), as by the verifier, and
        so is a round of a released run."""
        session_id, step, params, context = round.session_id, round.step, round.params, list(round.context)
        session = self._session(session_id, step, round.run)
        if params.grammar is not None and getattr(session, "constraint", False) is None:
            session.constraint = for_session(params.grammar, getattr(self.text, "tokenizer", None), self.vocab_size,
                                             round.output_start)
        generator = None if params.greedy else round_generator(round.seed, step, DRAFT_STREAM)  # greedy draws nothing
        if isinstance(self.drafter, ModelDrafter):
            job = Steps(session_id, session.grow(context, shape_parents, params, generator, budget))
            try:
                while True:
                    before = job.ms
                    level = self.batcher.next(job)  # with the other sessions drafting now, in one pass
                    if timing is not None:
                        timing.draft_ms += job.ms - before
                        timing.draft_rows = max(timing.draft_rows, job.rows)
                    if level is None:
                        return
                    yield level
                    latest = self._steps.get(session_id)
                    if latest is None:  # released meanwhile: draw no more
                        raise StaleRound(f"session {session_id}: round {step} was released here mid-round")
                    if latest != step:  # a newer round took the session: draw no more
                        raise StaleRound(f"session {session_id}: round {step} was overtaken by round {latest}")
            finally:
                self.batcher.close(job)
        depth = min(budget.max_len, max(depths_of(shape_parents), default=0))
        tokens = session.propose(context, depth, params, generator, budget)
        if tokens:  # prompt lookup's chain: one-hot q
            yield one_hot_chain(tokens)

    def guesses(self, round: Round, chain: list[int], max_lens: list[int], budget: DraftBudget | None,
                wanted: Callable[[], bool] = lambda: True) -> list[Guess]:
        """Guessed draft-ahead: the round after ``round`` drawn under each likely verdict of
        ``round`` (a chain drafted after its context), on a copy of the session's draft cache, one
        pass at a time on the compute thread; it stops, with no guesses, as soon as ``wanted()``
        is false (the verdict came first). Only drafts that can copy their cache guess (the
        feature draft), and not under a grammar; [] otherwise. The random draws are round
        ``step`` + 1's (one of its guesses or its own drawing is verified, never both)."""
        session, context, params = self._sessions.get(round.session_id), list(round.context), round.params
        if (session is None or not hasattr(getattr(session, "sequence", None), "fork")
                or getattr(session, "constraint", None) is not None or not session.sequence.ready(context)):
            return []
        twin = on_compute(_twin, session)
        generator = None if params.greedy else round_generator(round.seed, round.step + 1, DRAFT_STREAM)
        steps = guess_steps(twin, context, chain, (params, generator), max_lens, budget, self.guess_selection)
        reply = None
        while True:
            if not wanted():
                steps.close()
                return []
            try:
                item = steps.send(reply)
            except StopIteration as done:
                return done.value
            reply = on_compute(item.run)

    def claim(self, round: Round) -> None:
        """The round is this worker's latest though it drew no levels for it (a guessed round the
        verifier started on its own): its verdict is then accepted here."""
        self._session(round.session_id, round.step, round.run)

    def prefetch_features(self, round: Round, fetch_features) -> None:
        """Before a round's ``levels``, without holding ``lock``: a feature-level draft's missing
        target features of context[:−1] (fresh worker, plain rounds), from
        fetch_features(start) -> (start, features [n, H]), asked of the verifier. A fetch waits for
        a verifier pass (a prefill); under the lock it held up every other session's levels (8
        served sessions' first rounds queued past the orchestrator's draft deadline, and every
        later round after the plain steps that followed). Nothing for other drafts."""
        if not self.needs_features:
            return
        session = self._session(round.session_id, round.step, round.run)
        if session.feature_count() < len(round.context) - 1:
            on_compute(session.add_features, *fetch_features(session.feature_count()))

    def accept(self, session_id: str, step: int, result: VerifyResult,
               features: tuple[int, object] | None = None) -> None:
        """After the verdict: trim the draft's cache; a feature-level draft also keeps the target's
        features of the newly confirmed tokens, (start, [n, H]). Ignored unless ``step`` is the
        session's latest round (a newer round owns the cache)."""
        if self._steps.get(session_id) != step:
            return
        session = self._sessions.get(session_id)
        if session is not None:
            on_compute(self._update, session, result, features)  # the model's one thread (specgrove.compute)

    def _update(self, session, result: VerifyResult, features: tuple[int, object] | None) -> None:
        if hasattr(session, "accept"):
            session.accept(result)
        if features is not None and self.needs_features:
            session.add_features(*features)

    def feature_count(self, session_id: str) -> int:
        session = self._sessions.get(session_id)
        return session.feature_count() if session is not None and self.needs_features else 0

    def release(self, session_id: str, run: str = "") -> None:
        """Free the session's cache; with ``run``, also refuse that run's rounds still in flight."""
        with self.lock:
            owns = self._released.owns(session_id, run)
            self._released.add(session_id, run)
            if owns:  # not when a new run took the session over
                self._forget(session_id)
            self.metrics.record_cache(len(self._sessions), 0)
        if owns:
            self.batcher.forget(session_id)

    def _session(self, session_id: str, step: int, run: str = ""):
        with self.lock:
            if self._released.admit(session_id, run, step):  # a resumed session's new run: its own round
                self._forget(session_id)  # order, and a fresh draft cache (the old run's may hold tokens never committed)
            if step < self._steps.get(session_id, 0):
                raise StaleRound(f"session {session_id}: round {step} is older than round "
                                 f"{self._steps[session_id]}, already drafted here")
            self._steps[session_id] = step
            self._last_round = time.monotonic()
            return self._session_locked(session_id)

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._steps.pop(session_id, None)

    def _session_locked(self, session_id: str):
        session = self._sessions.pop(session_id, None) or self.drafter.open()
        self._sessions[session_id] = session
        while len(self._sessions) > self.max_sessions:
            evicted, _ = self._sessions.popitem(last=False)
            self._steps.pop(evicted, None)
        self.metrics.record_cache(len(self._sessions), 0)  # draft caches are small; their tokens are not counted
        return session


def _twin(session):
    """A copy of a draft session on a copy of its cache (on the compute thread: a consistent one)."""
    twin = copy.copy(session)
    twin.sequence = session.sequence.fork()
    return twin
