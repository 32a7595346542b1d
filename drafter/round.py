"""One drafter-side round, told once: fetch features → draw levels → verify → accept → record.

Both drivers run ``draft_round``: the in-process engine reaches the verifier worker by a direct
call, the served drafter over gRPC; either is a ``VerifierPort``. ``DrafterRounds`` is what a
served drafter does around it: a round run ahead (drafter/ahead.py) or verified under a guess
(drafter/guess.py) is taken instead of drawing it again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Protocol

import torch

from drafter.ahead import AheadRounds
from drafter.guess import GuessAsk, GuessCall, Guesser, RoundInProgress
from drafter.tree_growth import Level
from drafter.worker import DrafterWorker
from specgrove import telemetry
from specgrove.errors import StaleRound
from specgrove.round import DraftOrder, Round, RoundReport, RoundTiming, Verdict

log = logging.getLogger(__name__)


class VerifierPort(Protocol):
    """How a drafter reaches its verifier. ``in_process``: by a direct call (it takes no guesses:
    drawing them would hold up its own passes)."""

    in_process: bool

    def features(self, round: Round, start: int, timing: RoundTiming) -> tuple[int, torch.Tensor]:
        """The target's features of round.context[start:−1]: (start, [n, H])."""

    def verify(self, round: Round, levels: Iterator[Level], timing: RoundTiming) -> Verdict:
        """Verify the tree whose levels ``levels`` draws (streamed as they come, when served); fill
        the verifier's load and the bytes moved into ``timing``."""

    def guess(self, ask: GuessAsk) -> GuessCall:
        """Send guesses for the next round (served drafters only)."""


@dataclass
class _Drawn:
    size: int = 0
    depth: int = 0
    stale: StaleRound | None = None


def draft_round(worker: DrafterWorker, order: DraftOrder, port: VerifierPort,
                guesser: Guesser | None = None) -> RoundReport:
    """Grow the order's tree, have it verified, keep the verdict's path in the draft's cache, and
    report the round's costs. ``guesser``: told the round's chain once drawn, so it can guess the
    verdict meanwhile. A round overtaken or released mid-round raises StaleRound."""
    r, timing = order.round, RoundTiming()
    if worker.needs_features:  # the verifier answers with the new tokens' features
        r = replace(r, features_from=len(r.context) - 1)
        fetched = time.perf_counter()
        worker.prefetch_features(r, lambda start: port.features(r, start, timing))  # not under the model's lock
        timing.fetch_ms = (time.perf_counter() - fetched) * 1000
    drawn = _Drawn()
    current = guesser.begin_round(r) if guesser is not None else None
    levels = _watched(worker.levels(r, list(order.shape_parents), order.budget, timing), drawn, guesser, current)
    started = time.perf_counter()
    try:
        verdict = port.verify(r, levels, timing)
    except Exception:
        if drawn.stale is not None:  # overtaken or released mid-stream: say so, not what the transport saw
            raise drawn.stale from None
        raise
    finally:
        if current is not None:
            guesser.ended(current)
    return finish_round(worker, r, verdict, (drawn.size, drawn.depth), timing, started)


def finish_round(worker: DrafterWorker, r: Round, verdict: Verdict, shape: tuple[int, int], timing: RoundTiming,
                 started: float) -> RoundReport:
    """Trim the draft cache to the verdict (this round's only) and report the round: ``shape`` is
    its tree's (size, depth)."""
    timing.verify_ms, timing.pass_rows = verdict.verify_ms, verdict.pass_rows
    features = (r.features_from, verdict.features) if verdict.features is not None else None
    with worker.lock:
        worker.accept(r.session_id, r.step, verdict.result, features)
    timing.round_ms = (time.perf_counter() - started) * 1000
    size, depth = shape
    telemetry.trace.get_current_span().set_attributes({"specgrove.tree_bytes": timing.tree_bytes,
                                                       "specgrove.tree_size": size})
    worker.metrics.record_pass(size, timing.draft_ms / 1000, batch=None)  # the batcher's
    return RoundReport(verdict.result, size, depth, timing)


def _watched(levels: Iterator[Level], drawn: _Drawn, guesser: Guesser | None,
             current: RoundInProgress | None) -> Iterator[Level]:
    """The levels as drawn, counted; a stale round noted; the guesser told the chain at the end."""
    chain: list[int] | None = []
    try:
        for level in levels:
            drawn.size += len(level.tokens)
            drawn.depth += 1
            if chain is not None and len(level.tokens) == 1 and level.parents[0] == len(chain) - 1:
                chain.append(level.tokens[0])
            else:
                chain = None
            yield level
    except StaleRound as exc:
        drawn.stale, chain = exc, None
        raise
    except BaseException:
        chain = None  # cut short (cancelled): no verdict to guess
        raise
    finally:
        if current is not None:
            guesser.drawn(current, chain)


class DrafterRounds:
    """A served drafter's rounds: each one drawn afresh, or taken from the round run ahead for
    it or from the guess the verifier verified. ``ports(address, timeout_s)``: the verifier."""

    def __init__(self, worker: DrafterWorker, ports: Callable[[str, float | None], VerifierPort]):
        self.worker, self.ports = worker, ports
        self.ahead = AheadRounds(worker.max_sessions, worker.metrics)
        self.guesser = Guesser(worker)

    def draft(self, order: DraftOrder, time_remaining: float | None) -> RoundReport:
        """The order's round. One run ahead for exactly this order is not drawn again: its report
        is returned (waiting for it if it is still on its way)."""
        arrived = time.perf_counter()
        order = self._guessable(order, time_remaining)
        if order.ahead and order.guess:
            self.guesser.start(order, self._port(order, time_remaining), time_remaining)  # unless under way
        else:  # no permission to run the next round ahead: guesses assumed for it are cancelled
            self.guesser.cancel(order.round.session_id, order.round.step)
        report = self.ahead.take(order, arrived)
        if report is None:
            report = self._fresh(order, time_remaining)
        if order.ahead:
            self.ahead.start(order, report, self._next_round)
        return report

    def release(self, session_id: str, run: str) -> None:
        self.worker.release(session_id, run)
        self.ahead.drop(session_id)
        self.guesser.forget(session_id)

    def _port(self, order: DraftOrder, time_remaining: float | None) -> VerifierPort:
        timeouts = [t for t in (order.verify_timeout_s, time_remaining) if t is not None]
        return self.ports(order.verifier, min(timeouts) if timeouts else None)

    def _guessable(self, order: DraftOrder, time_remaining: float | None) -> DraftOrder:
        """The order, without its permission to guess where its verifier takes no guesses (one in
        this process: drawing them would hold up its passes)."""
        if order.guess and self._port(order, time_remaining).in_process:
            return replace(order, guess=False)
        return order

    def _fresh(self, order: DraftOrder, time_remaining: float | None) -> RoundReport:
        port = self._port(order, time_remaining)
        # only guessers read rounds in progress
        report = draft_round(self.worker, order, port, self.guesser if order.guess else None)
        self.worker.observe_link(order.verifier, report.timing)
        self.worker.metrics.verified_rounds.labels(path="in_process" if port.in_process else "grpc").inc()
        return report

    def _next_round(self, order: DraftOrder, time_remaining: float | None) -> RoundReport:
        """A round run ahead: the verifier's verdict on the guess that matched this round's
        context, when one did (it started the round itself); else the round drawn afresh."""
        found = self.guesser.take(order.round)
        if order.guess:  # assumed permission for the round after: the orchestrator cancels it if it must
            self.guesser.start(order, self._port(order, time_remaining), time_remaining)
        report = self._guessed(order, found, time_remaining) if found is not None else None
        return report if report is not None else self._fresh(order, time_remaining)

    def _guessed(self, order: DraftOrder, found, time_remaining: float | None) -> RoundReport | None:
        """The guessed round's report, or None when its verdict was not that very guess's."""
        sent, index, hit = found
        r = order.round
        if self.worker.needs_features:
            r = replace(r, features_from=len(r.context) - 1)
        current = self.guesser.begin_round(r)
        self.guesser.drawn(current, [level.tokens[0] for level in hit.levels])
        timing = RoundTiming(draft_ms=sent.draft_ms / sent.count, tree_bytes=sent.call.size, guessed=True,
                             guesses=sent.count)  # drawing the guesses, one guess's share (hidden under the last pass)
        started = time.perf_counter()
        try:
            answer = sent.call.result(time_remaining, timing)
        except Exception as exc:  # noqa: BLE001 - RpcError, a timeout: the round is drawn afresh
            sent.call.cancel()
            log.info("guessed round %d of session %s failed (%s); drafting it afresh", r.step, r.session_id, exc)
            answer = None
        finally:
            self.guesser.ended(current)
        if answer is None or answer[0] != index:  # only the very guess that matched
            return None
        self.worker.claim(r)
        shape = (sum(len(level.tokens) for level in hit.levels), len(hit.levels))
        return finish_round(self.worker, r, answer[1], shape, timing, started)
