"""Guessed draft-ahead: the next round drawn before this round's verdict is in.

A chain round d_1..d_K ends in one of K + 1 verdicts: j tokens accepted (j = 0..K), then one more
token x (the target's correction, or its bonus token after a full accept). While the verifier
checks the chain, the drafter draws the next round under the verdicts the draft itself deems most
likely (``likely_verdicts``: "j accepted" as likely as q(d_1) ⋯ q(d_j), then x by q(x)), or under
``width`` guesses per j: x_j one of the draft's best tokens other than d_{j+1} at depth j (after
d_K for j = K). The verifier holds the
guesses and, when the verdict equals one of them, verifies that guess's tree as the next round at
once: the drafter's draft time and both hops between them drop out of the round.

All guesses are grown as one token tree on a copy of the session's draft cache (``fork``): the
chain's nodes, the x_j as siblings of d_{j+1}, and under each x_j its chain, one pass per level.
A guessed round's pairs after the confirmed context read the draft's own features (F̂), since the
target's have not been computed yet; its q is exactly what its tokens were sampled from, so
verification stays exact whatever the guesses are.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Generator, Protocol

import torch
from opentelemetry import context as otel_context

from drafter.tree_growth import Level, _steps
from specgrove.budget import DraftBudget
from specgrove import telemetry
from specgrove.config import GUESS_COUNT
from specgrove.round import DraftOrder, Round, RoundTiming, Verdict

log = logging.getLogger(__name__)
GUESS_WAIT_S = 30.0  # the longest a guesser waits for its round to be drawn here


@dataclass(frozen=True)
class GuessSelection:
    """Which verdicts a round's guesses cover: the ``count`` the draft deems most likely over all
    acceptance lengths (``likely_verdicts``), or, with ``width``, that many per acceptance length."""

    count: int = GUESS_COUNT
    width: int | None = None

    def __post_init__(self):
        if self.count < 1 or (self.width is not None and self.width < 1):
            raise ValueError(f"guess count and width must be at least 1, got {self.count} and {self.width}")


@dataclass(frozen=True)
class Guess:
    emitted: list[int]  # the guessed verdict: d_1..d_j, then x_j
    levels: list[Level]  # the next round's chain after it, one node per level (q rows of its own tree)


class _GuessTree:
    """The token tree the guesses grow in: the chain's nodes, each guess's first token x_j as a
    sibling of d_(j+1), and under each x_j its chain. ``after_*`` take a node's logits and add
    the nodes the next pass feeds."""

    def __init__(self, session, chain: list[int], draw: tuple, max_lens: list[int], budget: DraftBudget | None,
                 selection: GuessSelection):
        self.session, self.chain, self.max_lens, self.budget, self.selection = session, chain, max_lens, budget, selection
        self.params, self.generator = draw
        self.nodes: list[int] = []
        self.parents: list[int] = []
        self.roles: list[tuple] = []  # per node: ("d", j) the chain's d_j, or ("g", (j, i)) guess (j, i)'s tail
        self.emitted: dict[tuple[int, int], list[int]] = {}
        self.levels: dict[tuple[int, int], list[Level]] = {}
        self.known: list[tuple[torch.Tensor, int]] = []  # count: the logits after d_1..d_j and d_j's node, per j

    def add(self, token: int, parent: int, role: tuple) -> None:
        self.nodes.append(token)
        self.parents.append(parent)
        self.roles.append(role)

    def start(self, j: int, i: int, x: int, here: int) -> None:
        self.emitted[j, i] = self.chain[:j] + [x]
        self.levels[j, i] = []
        self.add(x, here, ("g", (j, i)))

    def after_chain(self, j: int, logits: torch.Tensor, here: int) -> None:
        """The logits after d_1..d_j are known (``here``: d_j's node; −1, the root, for j = 0)."""
        chain, k = self.chain, len(self.chain)
        if j < k and not any(role == ("d", j + 1) for role in self.roles):
            self.add(chain[j], here, ("d", j + 1))
        if self.selection.width is None:
            self.known.append((logits, here))
            if j == k:  # every verdict's probability is known: the most likely ones are guessed
                picks = likely_verdicts([row for row, _ in self.known], chain, self.selection.count, self.max_lens)
                for i, (j_, x) in enumerate(picks):
                    self.start(j_, i, x, self.known[j_][1])
        elif self.max_lens[j] > 0:
            for i, x in enumerate(_best_others(logits, chain[j] if j < k else None, self.selection.width)):
                self.start(j, i, x, here)

    def after_guess(self, j: tuple[int, int], logits: torch.Tensor, node: int) -> None:
        """Guess j's deepest node (``node``) has its logits: draw its next token."""
        ids, probs, picked, q = self.session._children(logits, 1, self.params, self.generator)
        if not picked:  # nothing the draft may propose here
            return
        depth = len(self.levels[j]) + 1
        self.levels[j].append(Level([picked[0]], [depth - 2], {depth - 1: (ids, probs)}))
        stops = self.budget is not None and self.budget.stops(logits, q, self.params.greedy)
        if depth < self.max_lens[j[0]] and not stops:
            self.add(picked[0], node, ("g", j))

    def guesses(self) -> list[Guess]:
        return [Guess(self.emitted[j], self.levels[j]) for j in sorted(self.levels) if self.levels[j]]


def guess_steps(session, context: list[int], chain: list[int], draw: tuple, max_lens: list[int],
                budget: DraftBudget | None = None, selection: GuessSelection = GuessSelection(width=1),
                ) -> Generator[object, object, list[Guess]]:
    """Steps (the passes it asks for, as ``ModelDraftSession.grow``'s) that return the guesses
    for the round after ``chain`` (drafted after ``context``). ``session``: a draft session on its
    own (forked) cache, which these passes fill with tree nodes; ``draw``: (sampling parameters,
    generator) of the next round. max_lens[j]: the most tokens the next round may draft when this
    one accepts j (0: no guess for j). ``selection``: with a width, the guesses per j are the
    draft's ``width`` best tokens other than d_(j+1), best first; else the ``count`` verdicts the
    draft deems most likely over all j, chosen once the logits after d_K are known. The budget's
    stop rule ends a guessed chain as it ends a drafted one.

    One pass per tree level: a node's input is its parent's output. The chain's nodes and q's
    logits after them are reused when the cache still holds them from the round's own drawing
    (a feature draft's ``drawn_chain_logits``); otherwise the chain is fed again node by node.
    With a width, each x_j and its chain start as soon as the logits after d_j are known; with a
    count, every guess starts once the logits after d_K are (one more pass before them)."""
    assert len(max_lens) == len(chain) + 1, (len(max_lens), len(chain))
    tree, sequence = _GuessTree(session, chain, draw, max_lens, budget, selection), session.sequence
    drawn = getattr(sequence, "drawn_chain_logits", lambda *args: None)(context, chain)
    if drawn is None:  # feed the context's last pair again; the chain follows node by node
        drawn = [(yield from _steps(sequence, "logits_for", context, 1))[0]]
    for j in range(1, len(drawn)):  # d_1..d_m are cached nodes already (the round's own drawing)
        tree.add(chain[j - 1], j - 2, ("d", j))
    for j, logits in enumerate(drawn):
        tree.after_chain(j, logits, j - 1)
    first = len(drawn) - 1
    while first < len(tree.nodes):
        last = len(tree.nodes)
        rows = yield from _steps(sequence, "tree_logits", context, tree.nodes, tree.parents, first, last, False)
        for node, logits in zip(range(first, last), rows):
            kind, j = tree.roles[node]
            (tree.after_chain if kind == "d" else tree.after_guess)(j, logits, node)
        first = last
    return tree.guesses()


def likely_verdicts(logits: list[torch.Tensor], chain: list[int], count: int,
                    max_lens: list[int] | None = None) -> list[tuple[int, int]]:
    """The ``count`` verdicts (j, x) of a chain round the draft deems most likely, most likely
    first: logits[j] are the draft's logits after d_1..d_j (j = 0..K), and with q = softmax at
    T = 1 the verdict "j accepted, then x" (x other than d_(j+1)) scores
    q_0(d_1) ⋯ q_(j−1)(d_j) · q_j(x). Verdicts with max_lens[j] = 0 are skipped."""
    scored, reach = [], 1.0
    for j, row in enumerate(logits):
        q = torch.softmax(row.float(), -1)
        if max_lens is None or max_lens[j] > 0:
            scored += [(reach * float(q[x]), j, x) for x in _best_others(row, chain[j] if j < len(chain) else None, count)
                       if q[x] > 0]
        if j < len(chain):
            reach *= float(q[chain[j]])
    scored.sort(key=lambda s: -s[0])
    return [(j, x) for _, j, x in scored[:count]]


def _best_others(logits: torch.Tensor, drafted: int | None, n: int) -> list[int]:
    """The n tokens with the highest ``logits`` other than ``drafted`` (None: any), best first;
    never one the draft may not propose (−inf)."""
    other = logits.clone()
    if drafted is not None:
        other[drafted] = float("-inf")
    best = other.topk(min(n, other.numel()))
    return best.indices[best.values > float("-inf")].tolist()


@dataclass(frozen=True)
class GuessAsk:
    """Guesses for ``round`` (the round after a chain being verified), sent to the verifier: it
    waits up to ``wait_s`` for the verdict on ``chain`` and verifies the guess that matches it."""

    round: Round
    chain: list[int]
    guesses: list[Guess]
    wait_s: float | None


class GuessCall(Protocol):
    """The verifier's answer to a ``GuessAsk``, on its way."""

    size: int  # bytes sent

    def result(self, timeout: float | None, timing: RoundTiming) -> tuple[int, Verdict] | None:
        """(the index of the guess verified, its verdict), or None when none matched; fills the
        verifier's load and the bytes received into ``timing``."""

    def cancel(self) -> None: ...


@dataclass
class RoundInProgress:
    """A round drawn on this drafter: its context, then its chain once drawn, then its verdict."""

    step: int
    context: list[int]
    chain: list[int] | None = None  # the drawn chain's tokens (None: a tree, or nothing drawn)
    drawn: bool = False
    done: bool = False  # the verdict is in (or the round failed)


@dataclass
class SentGuesses:
    """Guesses sent for a session's round ``step``: each by the context it guesses, and the
    verifier's answer (``call``)."""

    step: int
    by_context: dict[tuple[int, ...], tuple[int, Guess]]  # by the context it guesses: (its index, the guess)
    call: GuessCall
    draft_ms: float
    count: int


class Guesser:
    """Guessed draft-ahead on one drafter, as one state machine per session: the round in
    progress, whether its verdict is being guessed, and the guesses sent for the next round.

    A round run ahead guesses at once, before the orchestrator's request for it comes with
    permission to run the next one ahead: that request arrives two hops after the previous
    verdict, too late to draw guesses and send them before the pass ends. Permission is assumed,
    and the guesses cancelled (``cancel``) when the request comes without it."""

    def __init__(self, worker):
        self.worker = worker
        self._rounds: dict[str, RoundInProgress] = {}  # session -> its latest round drawn here
        self._sent: dict[str, SentGuesses] = {}  # session -> the guesses sent for its next round
        self._guessing: dict[str, int] = {}  # session -> the latest round whose verdict it guesses
        self._cancelled: dict[str, int] = {}  # session -> the latest round with no permission for the next
        self._turn = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=max(1, worker.max_sessions), thread_name_prefix="guess")

    def begin_round(self, r: Round) -> RoundInProgress:
        current = RoundInProgress(r.step, list(r.context))
        with self._turn:
            self._rounds[r.session_id] = current
            self._turn.notify_all()
        return current

    def drawn(self, current: RoundInProgress, chain: list[int] | None) -> None:
        """The round's tree is drawn (``chain``: its tokens when it is a chain, else None)."""
        with self._turn:
            current.chain, current.drawn = chain, True
            self._turn.notify_all()

    def ended(self, current: RoundInProgress) -> None:
        with self._turn:
            current.done = True
            self._turn.notify_all()

    def start(self, order: DraftOrder, port, time_remaining: float | None) -> None:
        """Guess the verdict of ``order``'s round in the background (``port.guess`` sends the
        guesses), unless that is under way or was cancelled."""
        r = order.round
        if not order.is_chain:
            return
        with self._turn:
            if self._guessing.get(r.session_id) == r.step or self._cancelled.get(r.session_id) == r.step:
                return
            self._guessing[r.session_id] = r.step
        self._pool.submit(self._guess, order, port, otel_context.get_current(), time_remaining)

    def cancel(self, session_id: str, step: int) -> None:
        """Round ``step`` has no permission for the next one: stop guessing it, cancel guesses sent."""
        with self._turn:
            self._cancelled[session_id] = step  # a guesser not started yet stays away
            if self._guessing.get(session_id) == step:
                del self._guessing[session_id]
            sent = self._sent.get(session_id)
            if sent is not None and sent.step == step + 1:
                del self._sent[session_id]
                sent.call.cancel()  # the verifier drops them (unless the verdict already took one)

    def take(self, r: Round) -> tuple[SentGuesses, int, Guess] | None:
        """The guesses sent for ``r`` and the one whose context is ``r``'s, if one is; the
        others' call is cancelled."""
        with self._turn:
            sent = self._sent.pop(r.session_id, None)
        if sent is None:
            return None
        found = sent.by_context.get(r.context) if sent.step == r.step else None
        self.worker.metrics.guessed_rounds.labels(outcome="hit" if found is not None else "miss").inc()
        if found is None:
            sent.call.cancel()
            return None
        return sent, *found

    def forget(self, session_id: str) -> None:
        """The session ended here: cancel its guesses; a guesser drawing for it stops."""
        with self._turn:
            sent = self._sent.pop(session_id, None)
            if sent is not None:
                sent.call.cancel()
            self._guessing.pop(session_id, None)
            self._cancelled.pop(session_id, None)
            current = self._rounds.pop(session_id, None)
            if current is not None:
                current.done = True
            self._turn.notify_all()

    def _guess(self, order: DraftOrder, port, parent, time_remaining: float | None) -> None:
        """Once this round's chain is drawn, and while its verdict is not in, draw the next round
        under each likely verdict and send the guesses to the verifier."""
        token = otel_context.attach(parent)
        try:
            self._guess_round(order, port, time_remaining)
        except Exception:  # noqa: BLE001 - a guess is an optimisation: the round is drawn afresh without it
            log.exception("guessing the next round of session %s failed", order.round.session_id)
        finally:
            otel_context.detach(token)

    def _guess_round(self, order: DraftOrder, port, time_remaining: float | None) -> None:
        r = order.round
        wait = min(time_remaining if time_remaining is not None else GUESS_WAIT_S, GUESS_WAIT_S)
        with self._turn:  # the round is drawn here (afresh or ahead), or already done
            self._turn.wait_for(lambda: self._is_drawn(r.session_id, r.step), wait)
            current = self._rounds.get(r.session_id)
        if current is None or current.step != r.step or current.done or not current.chain:
            return
        started = time.perf_counter()
        guesses = self._draw(order, current)
        if not guesses:
            if current.done:
                self.worker.metrics.guessed_rounds.labels(outcome="late").inc()
            return
        draft_ms = (time.perf_counter() - started) * 1000
        following = replace(r, step=r.step + 1, features_from=0 if self.worker.needs_features else None)
        ask = GuessAsk(following, current.chain, guesses, order.verify_timeout_s)
        by_context = {tuple(current.context + g.emitted): (i, g) for i, g in enumerate(guesses)}
        with self._turn:
            if self._guessing.get(r.session_id) != r.step:  # cancelled
                return
            if current.done:  # the verdict came first: the guesses are of no use
                self.worker.metrics.guessed_rounds.labels(outcome="late").inc()
                return
            call = port.guess(ask)  # it answers with the next round's verdict
            previous = self._sent.pop(r.session_id, None)
            if previous is not None:
                previous.call.cancel()
            self._sent[r.session_id] = SentGuesses(r.step + 1, by_context, call, draft_ms, len(guesses))

    def _draw(self, order: DraftOrder, current: RoundInProgress) -> list[Guess]:
        r = order.round
        max_lens = [max(0, order.next_max_len(j + 1)) for j in range(len(current.chain) + 1)]

        def wanted() -> bool:  # neither the verdict came nor were the guesses cancelled
            return not current.done and self._guessing.get(r.session_id) == r.step

        with telemetry.tracer().start_as_current_span("drafter guesses", attributes={
                "specgrove.session_id": r.session_id, "specgrove.step": r.step + 1}) as span:
            guesses = self.worker.guesses(replace(r, context=tuple(current.context)), current.chain, max_lens,
                                          order.budget, wanted)
            span.set_attribute("specgrove.guesses", len(guesses))
        return guesses

    def _is_drawn(self, session_id: str, step: int) -> bool:
        current = self._rounds.get(session_id)
        return current is not None and (current.step > step or (current.step == step and (current.drawn or current.done)))
