"""The drafter worker's logic, free of gRPC: per-session draft state (LRU) and a round's tree
grown level by level. A model drafter grows the planner's shape under the round's budget; the
n-gram drafter proposes one chain with one-hot q."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterator

from drafter.budget import DraftBudget
from drafter.model_drafter import Level, ModelDrafter, one_hot_chain
from specgrove.sampling import DRAFT_STREAM, SamplingParams, round_generator
from specgrove.tree import VerifyResult, depths_of

MAX_SESSIONS = 64


class DrafterWorker:
    def __init__(self, drafter, max_sessions: int = MAX_SESSIONS):
        self.drafter = drafter
        self.name = drafter.name
        self.vocab_size = drafter.vocab_size
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.RLock()  # one forward pass at a time on this model

    def levels(
        self, session_id: str, step: int, context: list[int], params: SamplingParams, seed: int,
        shape_parents: list[int], budget: DraftBudget,
    ) -> Iterator[Level]:
        """The round's tree, one level at a time (draw each level under ``lock``: the model is shared;
        one session's rounds never overlap, the orchestrator runs them in order)."""
        session = self._session(session_id)
        generator = round_generator(seed, step, DRAFT_STREAM)
        if isinstance(self.drafter, ModelDrafter):
            yield from session.grow_levels(context, shape_parents, params, generator, budget)
            return
        depth = min(budget.max_len, max(depths_of(shape_parents), default=0))
        proposal = session.propose(context, depth, params, generator, budget)
        if proposal.tokens:  # the n-gram drafter's chain: one-hot q
            yield one_hot_chain(proposal.tokens)

    def accept(self, session_id: str, result: VerifyResult) -> None:
        session = self._sessions.get(session_id)
        if session is not None and hasattr(session, "accept"):
            session.accept(result)

    def release(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _session(self, session_id: str):
        with self.lock:
            return self._session_locked(session_id)

    def _session_locked(self, session_id: str):
        session = self._sessions.pop(session_id, None) or self.drafter.open()
        self._sessions[session_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session
