"""The verifier worker's logic, free of gRPC: per-session target KV caches (slots of one batched
cache, LRU), and every round that is waiting verified together in one forward pass
(continuous batching): a verify pass on a tree received level by level, a plain decoding step
(K = 0), or a prefill.

Batching needs no scheduler thread: the caller that finds the model free becomes the **leader**,
takes every waiting round (one per session) and runs them as one pass while later callers wait;
then it hands over to one of them. A lone round runs at once, so one session pays nothing."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from specgrove.compute import on_compute
from specgrove.config import MAX_BATCH
from specgrove.errors import InvalidArgument, OutOfRange, StaleRound
from specgrove.run_ownership import ReleasedRuns
from specgrove.grammar import Constraint, constrain, for_session
from specgrove.batch_leader import BatchLeader
from specgrove.metrics import WorkerMetrics
from specgrove.round import Round, Verdict
from specgrove.models import CausalLM
from specgrove.sampling import VERIFY_STREAM, SamplingParams, round_generator, warp
from specgrove.tree import TokenTree
from verifier.batched import BatchedTarget, Row, SlotState
from verifier.tree_verify import verify_tree

MAX_SESSIONS = 64
WARM_UP_SESSION = "__warm_up__"
LONG_FEED = 48  # a round feeding more tokens (a prefill) runs in a pass of its own, not padding others to it


@dataclass
class _Session:
    state: SlotState
    constraint: Constraint | None = None  # structured output: every row of p is masked by its path
    step: int = 0  # the latest round verified (a worker refuses older ones)


@dataclass
class _Job:
    round: Round
    context: list[int]  # the round's context, the worker's own list
    tree: TokenTree
    prefill: bool = False  # a prefill for features only: nothing is verified
    guessed: bool = False  # a guessed round (verify_guess): it does not claim its step
    result: tuple | None = None
    error: BaseException | None = None
    done: bool = False
    session: _Session | None = field(default=None, repr=False)

    @property
    def session_id(self) -> str:
        return self.round.session_id


class VerifierWorker:
    def __init__(self, model: CausalLM, max_sessions: int = MAX_SESSIONS, min_pass_ms: float = 0.0,
                 keep_features: bool = True, max_kv_tokens: int | None = None, max_batch: int = MAX_BATCH):
        """min_pass_ms: make every pass last at least this long, emulating a target whose pass
        costs about the same for 1 token as for dozens (a large model on a GPU); tests, benchmarks.
        keep_features: keep the target's features for a feature-level draft (a served verifier
        cannot know its drafters' kind; an in-process engine without such a draft turns it off).
        max_kv_tokens: the KV budget in tokens over every session's cache; past it, the least
        recently used sessions are evicted (a later round of theirs re-prefills from its context).
        max_batch: the most rounds verified in one pass (1 turns batching off).
        """
        self.model = model
        self.keep_features = keep_features
        self.max_kv_tokens = max_kv_tokens
        self.max_sessions = max_sessions
        self.max_batch = max(1, max_batch)
        self.min_pass_ms = min_pass_ms
        self.target = BatchedTarget(model, keep_features=keep_features)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # most recently used last
        self._released = ReleasedRuns()
        self._waiting: list[_Job] = []
        self._running = False  # a pass is running (the sessions' caches are in use)
        self._turns = BatchLeader()  # leading passes; ``out``: the last pass's sessions not back yet
        self._turn = self._turns.turn
        self._pass_s = 0.0  # how long a pass takes (EWMA)
        self._tokens_per_pass = 1.0  # EWMA
        # session -> (its latest verified step, that round's context, the tokens it emitted, its tree's tokens)
        self._verdicts: dict[str, tuple[int, list[int], list[int], list[int]]] = {}
        self.metrics = WorkerMetrics("verify", max_sessions)
        self.draining = False  # told to stop: orchestrators place no new sessions here and move theirs
        self._last_round = float("-inf")

    def load_report(self) -> dict:
        """What orchestrators route by (``WorkerLoad``): sessions, queue, KV use, pass time. Before
        any round, one warm-up pass measures the pass time."""
        if self._pass_s == 0.0:
            self.warm_up()
        return {"sessions": len(self._sessions), "max_sessions": self.max_sessions, "waiting": len(self._waiting),
                "kv_tokens": self._kv_tokens(),
                "max_kv_tokens": self.max_kv_tokens or 0, "pass_ms": self._pass_s * 1000,
                "tokens_per_pass": self._tokens_per_pass, "draining": self.draining}

    def busy(self, quiet_s: float = 1.0) -> bool:
        """A round came in the last ``quiet_s`` (a draining verifier waits until its sessions have
        moved away or ended: then none comes)."""
        return bool(self._waiting) or time.monotonic() - self._last_round < quiet_s

    def warm_up(self) -> None:
        """One plain step on a short context, on a session of its own (released at once): it
        measures this worker's pass time before any session arrives."""
        context = tuple(range(min(8, self.model.vocab_size)))
        self.verify(Round(WARM_UP_SESSION, 1, context, SamplingParams(), 0), empty_tree())
        self.release(WARM_UP_SESSION)

    def verify(self, round: Round, tree: TokenTree) -> Verdict:
        """The round's verdict. A fresh or restarted worker prefills from the round's context.
        ``round.features_from``: also return the target's features of the confirmed tokens from
        that index to the last accepted one ([len(context) + accepted − features_from, H]).
        A round older than the session's latest is refused (StaleRound): an abandoned call must
        not move a cache a newer round owns; the same round again (a retry) is served. So is a
        round of a released run (see specgrove.run_ownership). The verdict's milliseconds are
        those of the pass the round rode in, shared with the other rounds in it; its rows are the
        tokens that pass fed (every round's in it, prefills included)."""
        context = list(round.context)
        self.check(context, tree)
        return self._submit(_Job(round, context, tree))

    def verify_guess(self, round: Round, guesses: list[tuple[list[int], TokenTree]], chain: list[int] | None = None,
                     timeout_s: float | None = None, wanted: Callable[[], bool] = lambda: True,
                     ) -> tuple[int, Verdict] | None:
        """Guessed draft-ahead: wait (up to ``timeout_s``) for the verdict of the round before
        ``round`` on ``round.context``; when that context plus one guess's emitted tokens is the
        context the verdict left, verify that guess's tree as ``round`` at once: (the guess's
        index, its verdict, with features from the guessed context's last token on when
        ``round.features_from`` is set). None when no guess matches (or the verdict did not come
        in time, or ``wanted()`` turned false: the drafter cancelled them; call ``wake`` then):
        nothing is verified. ``chain``: the previous round's tree tokens; a verdict of that step
        from another tree (another verification of it, as of a guessed round nobody took) is not
        the one guessed, and is waited past.

        Guessed rounds do not claim their step against stale rounds (``_admit``): the orchestrator
        has not asked for them, and may still ask for an earlier step (a plain step after a
        failed draft) or the same one again."""
        base, session_id, previous = list(round.context), round.session_id, round.step - 1
        for emitted, tree in guesses:
            self.check(base + list(emitted), tree)

        def this_verdict(verdict) -> bool:
            return verdict is not None and verdict[0] == previous and (chain is None or verdict[3] == list(chain))

        def verdict_in() -> bool:
            verdict = self._verdicts.get(session_id)
            return this_verdict(verdict) or (verdict is not None and verdict[0] > previous) or not wanted()

        with self._turn:
            self._turn.wait_for(verdict_in, timeout_s)
            verdict = self._verdicts.get(session_id)
        if not this_verdict(verdict) or not wanted() or verdict[1] != base:
            return None
        for index, (emitted, tree) in enumerate(guesses):
            if list(emitted) == verdict[2]:
                context = base + verdict[2]
                guessed = replace(round, context=tuple(context),
                                  features_from=None if round.features_from is None else len(context) - 1)
                return index, self._submit(_Job(guessed, context, tree, guessed=True))
        return None

    def wake(self) -> None:
        """Let waiting guesses look again (their call ended)."""
        with self._turn:
            self._turn.notify_all()

    def prefix_features(self, session_id: str, context: list[int], start: int, run: str = "") -> torch.Tensor:
        """The target's features of context[start : len(context) − 1] ([n, H]); prefills as needed."""
        self.check(context, empty_tree())
        if not 0 <= start <= len(context) - 1:
            raise OutOfRange("features_from", f"must be in [0, {len(context) - 1}], got {start}")
        round = Round(session_id, 0, tuple(context), SamplingParams(), 0, run=run, features_from=start)
        return self._submit(_Job(round, list(context), empty_tree(), prefill=True))

    @property
    def load(self) -> tuple[int, float]:
        """(sessions held, tokens per pass lately): the load planners size their rounds by."""
        return len(self._sessions), self._tokens_per_pass

    def check(self, context: list[int], tree: TokenTree) -> None:
        vocab = self.model.vocab_size
        if not context:
            raise InvalidArgument("context", "must hold at least one token")
        low, high = min(context), max(context)
        if tree.size:
            low, high = min(low, int(tree.tokens.min())), max(high, int(tree.tokens.max()))
        if low < 0 or high >= vocab:
            raise OutOfRange("tokens", f"token ids must be in [0, {vocab})")
        if len(context) + tree.size > self.model.max_positions:
            raise OutOfRange("context", f"{len(context)} tokens + {tree.size} nodes exceed the target's "
                                        f"context of {self.model.max_positions}")

    def release(self, session_id: str, run: str = "") -> None:
        """Free the session's cache; with ``run``, also refuse that run's rounds still in flight."""
        with self._turn:
            while self._running:
                self._turn.wait()
            owns = self._released.owns(session_id, run)  # not when a new run took the session over
            self._released.add(session_id, run)
            if owns:
                self._verdicts.pop(session_id, None)
                session = self._sessions.pop(session_id, None)
                if session is not None:
                    self.target.close(session.state)
            self._record_cache()
            self._turn.notify_all()  # a gathering leader stops waiting for this session

    # ------------------------------------------------------------------ batching

    def _submit(self, job: _Job):
        """Queue the round; lead passes while the model is free, until this round is done."""
        if job.session_id != WARM_UP_SESSION:
            self._last_round = time.monotonic()
        with self._turn:
            self._waiting.append(job)
            self.metrics.waiting.inc()
            self._turns.arrive(job.session_id)
            self._turns.run_batches_until(lambda: job.done, self._gather, self._take, self._run, self._ran)
        if job.error is not None:
            raise job.error
        return job.result

    def _gather(self) -> None:
        """Wait a little for the last pass's sessions to come back with their next rounds, so
        that one early round does not run alone and split the batch in two. The wait is bounded by
        three times their usual return time and half a pass: a late session costs at most that.
        Called holding the turn."""
        def expected() -> bool:  # a session of the last pass, still open, has not come back
            return any(s in self._sessions for s in self._turns.out)

        if not expected() or len({job.session_id for job in self._waiting}) >= self.max_batch:
            return
        self._turns.wait_while(expected, min(3 * self._turns.gap_s + 0.001, 0.5 * self._pass_s))

    def _take(self) -> list[_Job]:
        """The rounds of the next pass: the oldest waiting first, one per session, short ones
        together; a long feed (a prefill) alone. Called holding the turn."""
        batch, seen = [], set()
        for job in list(self._waiting):
            if job.session_id in seen or len(batch) == self.max_batch:
                continue
            long = self._feed_length(job) > LONG_FEED
            if long and batch:
                continue
            batch.append(job)
            seen.add(job.session_id)
            if long:
                break
        for job in batch:
            self._waiting.remove(job)
            self.metrics.waiting.dec()
        self._running = True  # from here until ``_ran``, the sessions' caches are in use
        return batch

    def _ran(self, batch: list[_Job]) -> None:
        self._running = False

    def _feed_length(self, job: _Job) -> int:
        session = self._sessions.get(job.session_id)
        cached = self.target.reusable(session.state, job.context) if session is not None else 0
        return len(job.context) - cached + job.tree.size

    def _run(self, batch: list[_Job]) -> None:
        """One pass over the batch's rounds (a leader holds the model; no other state changes)."""
        start = time.perf_counter()
        rows = []
        for job in batch:
            try:
                job.session = self._admit(job)
                rows.append(job)
            except BaseException as exc:  # noqa: BLE001 - this round fails, the rest of the batch goes on
                job.error, job.done = exc, True
        if not rows:
            return
        rows.sort(key=lambda j: j.session.state.slot)  # slots 0..B−1 in order: the pass reads a view, copies nothing
        try:
            on_compute(self._pass, rows, start)  # the model's one thread (specgrove.compute)
            spare = self.min_pass_ms / 1000 - (time.perf_counter() - start)
            if spare > 0:  # here, not on the compute thread: a GPU-bound pass leaves the CPU to drafting
                time.sleep(spare)
            elapsed = time.perf_counter() - start
            tokens = sum(j.tree.size + 1 for j in rows)
            self.metrics.record_pass(tokens, elapsed, batch=len(rows))
            self._pass_s = elapsed if self._pass_s == 0.0 else self._pass_s + 0.2 * (elapsed - self._pass_s)
            self._tokens_per_pass += 0.2 * (tokens - self._tokens_per_pass)
            done = time.monotonic()
            self._turns.out = {j.session_id: done for j in rows}
            self._record_cache(self._evict(keep={j.session_id for j in rows}))
        except BaseException as exc:  # noqa: BLE001 - the pass failed: every round in it fails
            for job in rows:
                job.error = job.error or exc
        finally:
            for job in rows:
                job.done = True

    def _admit(self, job: _Job) -> _Session:
        """The job's session, checked against stale rounds and released runs; opened if new."""
        r = job.round
        taken_over = self._released.admit(r.session_id, r.run, r.step)  # a resumed session's new run
        session = self._sessions.pop(job.session_id, None)
        if session is None:
            if len(self._sessions) >= self.max_sessions:  # the least recently used one makes room
                evicted_id, evicted = self._sessions.popitem(last=False)
                self._verdicts.pop(evicted_id, None)
                self.target.close(evicted.state)
            session = _Session(self.target.open())
            if job.session_id != WARM_UP_SESSION:
                self.metrics.prefills.inc()
        self._sessions[job.session_id] = session
        if taken_over:  # the old run's rounds here were never committed: its order and verdict go
            session.step = 0
            self._verdicts.pop(job.session_id, None)
        if job.prefill:
            return session
        if r.step < session.step:
            raise StaleRound(f"session {r.session_id}: round {r.step} is older than round {session.step}, "
                             "already verified here")
        if not job.guessed:
            session.step = r.step
        if session.constraint is None and r.params.grammar is not None:
            session.constraint = for_session(r.params.grammar, self.model.tokenizer, self.model.vocab_size,
                                             r.output_start)
        return session

    def _pass(self, jobs: list[_Job], start: float) -> None:
        """The forward pass over the jobs' rows, then each row's verification (on the compute
        thread). The pass is reported to last at least ``min_pass_ms``: its emulated wait follows
        in the caller, off this thread."""
        planned = [Row(j.session.state, j.context, j.tree.tokens.tolist(), j.tree.parents.tolist()) for j in jobs]
        logits = self.target.run(planned)
        fed = sum(len(row.feed) for row in planned)  # the tokens the pass fed (its plan filled each row's feed)
        verify_ms = max((time.perf_counter() - start) * 1000, self.min_pass_ms)
        for job, row_logits in zip(jobs, logits):
            try:
                job.result = self._finish(job, row_logits, verify_ms, fed)
            except BaseException as exc:  # noqa: BLE001 - this round fails, the rest of the batch goes on
                job.error = exc

    def _finish(self, job: _Job, logits: torch.Tensor, verify_ms: float, fed: int):
        """Verify one row of the pass and keep its accepted path."""
        state = job.session.state
        r = job.round
        if job.prefill:  # a prefill for features
            self.target.keep_path(state, [])
            return state.features[: len(job.context) - 1][r.features_from:]
        params, tree = r.params, job.tree
        if job.session.constraint is not None:  # structured output: each row masked by its path's grammar state
            logits = constrain(logits, job.session.constraint, job.context, [[]] + tree.paths())
        p = logits if params.greedy else warp(logits, params)  # greedy verification reads only the argmax
        generator = None if params.greedy else round_generator(r.seed, r.step, VERIFY_STREAM)
        result = verify_tree(tree, p, params.greedy, generator)
        self.target.keep_path(state, result.accepted_nodes)
        self._verdicts[job.session_id] = (r.step, job.context, [*result.accepted_tokens, result.next_token],
                                          tree.tokens.tolist())  # the job's own context: no copy a round
        features = None
        if r.features_from is not None:
            features = state.features[: len(job.context) + len(result.accepted_tokens)][r.features_from:]
        return Verdict(result, verify_ms, features, fed)

    def _evict(self, keep: set[str]) -> int:
        """Drop least recently used sessions until the cached tokens fit the budget (never those
        in ``keep``); the tokens cached afterwards."""
        total = self._kv_tokens()
        if self.max_kv_tokens is None:
            return total
        for session_id in list(self._sessions):
            if total <= self.max_kv_tokens:
                break
            if session_id not in keep:
                session = self._sessions.pop(session_id)
                self._verdicts.pop(session_id, None)
                total -= len(session.state.tokens)
                self.target.close(session.state)
                self.metrics.kv_evictions.inc()
        return total

    def _record_cache(self, tokens: int | None = None) -> None:
        """tokens: those cached now, when the caller just counted them."""
        self.metrics.record_cache(len(self._sessions), self._kv_tokens() if tokens is None else tokens)

    def _kv_tokens(self) -> int:
        """The tokens cached over every session."""
        return sum(len(s.state.tokens) for s in list(self._sessions.values()))


_EMPTY = TokenTree(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                   torch.full((1, 1), -1, dtype=torch.long), torch.zeros(1, 1))


def empty_tree() -> TokenTree:
    """The tree of a plain decoding step (K = 0); shared, never modified."""
    return _EMPTY
