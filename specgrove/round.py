"""One round as the workers see it, free of the wire: what it is (``Round``), what the
orchestrator asks a drafter to do with it (``DraftOrder``), and what came of it (``RoundReport``).

``specgrove.codec`` converts them to and from their protobuf twins (``RoundContext``,
``DraftRequest``, ``RoundReply``); below ``services/`` nothing else touches a wire type.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from specgrove.budget import DraftBudget
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult


@dataclass(frozen=True)
class Round:
    """One round of one session: everything a worker needs to draw or verify it exactly.

    The random draws of a round are keyed by (seed, step), so the same round drawn twice (a retry,
    a round run ahead) draws the same tokens. ``run`` names the orchestrator run that owns the
    session (a resumed session is a new run); ``features_from``, when set, asks the verifier for
    the target's features of the confirmed tokens from that index on (a feature-level draft reads
    them)."""

    session_id: str
    step: int
    context: tuple[int, ...]  # prompt + confirmed tokens
    params: SamplingParams
    seed: int
    output_start: int = 0  # where the output begins in ``context`` (a grammar constrains it)
    run: str = ""
    features_from: int | None = None

    def following(self, emitted: list[int]) -> "Round":
        """The next round of the session, after this one emitted ``emitted``."""
        return replace(self, step=self.step + 1, context=self.context + tuple(emitted))


@dataclass(frozen=True)
class DraftOrder:
    """A drafter's instructions for one round: the tree shape to grow under which budget, the
    verifier to stream it to, and whether it may run the next round ahead (``ahead``, within
    ``ahead_room`` tokens still to emit, this round's included) and guess its verdict (``guess``)."""

    round: Round
    shape_parents: tuple[int, ...]
    budget: DraftBudget
    verifier: str = ""  # host:port; empty in process
    verify_timeout_s: float | None = None
    ahead: bool = False
    ahead_room: int = 0
    guess: bool = False

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.shape_parents))

    def next_max_len(self, emitted: int) -> int:
        """The most tokens the next round may draft when this one emits ``emitted``: this round's
        depth cap, within the tokens it leaves to emit less one (a round emits one more than it
        accepts). Guessed rounds are sized by it too."""
        return min(self.budget.max_len, self.ahead_room - emitted - 1)

    def following(self, emitted: list[int]) -> "DraftOrder | None":
        """The next round's order, drawn ahead under this one's plan (its depth capped by the
        tokens this round leaves), with no permission of its own to run ahead; None when this round
        leaves nothing to draft."""
        max_len = self.next_max_len(len(emitted))
        if max_len <= 0:
            return None
        return replace(self, round=self.round.following(emitted), budget=replace(self.budget, max_len=max_len),
                       ahead=False, ahead_room=self.ahead_room - len(emitted))


class Verdict(NamedTuple):
    """The verifier's answer to one round."""

    result: VerifyResult
    verify_ms: float  # the pass the round rode in (shared with the other rounds in it)
    features: torch.Tensor | None  # the target's features from ``Round.features_from`` on, when asked
    pass_rows: int  # the tokens that pass fed (every round's in it, prefills included)


class RecentMin:
    """The least of the last ``size`` times measured on a path: the path's own time, without the
    queueing that only ever adds to it (the filter TCP's BBR keeps its min-RTT with)."""

    def __init__(self, size: int = 16):
        self._times: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._times.append(max(0.0, ms))

    @property
    def ms(self) -> float | None:
        return min(self._times) if self._times else None


@dataclass
class RoundTiming:
    """What a round cost, measured where it ran; the planner learns from it (``LinkStats``)."""

    draft_ms: float = 0.0  # the draft passes the round's levels rode in
    draft_rows: int = 0  # the most sessions in one of those passes
    verify_ms: float = 0.0
    round_ms: float = 0.0  # drafter-side wall time: draw, stream, verify, accept
    fetch_ms: float = 0.0  # a feature draft's catch-up fetch before the round (not part of its cost)
    tree_bytes: int = 0  # drafter -> verifier
    feature_bytes: int = 0  # verifier -> drafter
    sessions: int = 0  # the verifier's load: sessions held
    pass_tokens: float = 0.0  # ... and tokens per pass lately
    pass_rows: int = 0  # the tokens the round's pass fed
    ahead: bool = False  # drawn and verified before it was asked for
    overlap_ms: float = 0.0  # how much of it ran before the orchestrator asked
    guessed: bool = False  # verified under a guess of the previous verdict
    guesses: int = 0
    steps_ahead: int = 0  # a plain step's: the session's next plain steps the verifier has started


@dataclass
class RoundReport:
    """What came of a round: the verdict and the tree it judged."""

    result: VerifyResult
    tree_size: int = 0  # draft tokens (tree nodes) verified; 0 for a plain step
    tree_depth: int = 0  # levels drawn
    timing: RoundTiming = field(default_factory=RoundTiming)
