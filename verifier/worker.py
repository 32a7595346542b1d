"""The verifier worker's logic, free of gRPC: per-session target KV caches (LRU), one verify
pass per round on a tree received level by level, or one plain decoding step (K = 0)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import torch

from specgrove.errors import InvalidArgument, OutOfRange, StaleRound
from specgrove.fence import ReleasedRuns
from specgrove.grammar import for_session
from specgrove.metrics import WorkerMetrics
from specgrove.models import CausalLM
from specgrove.sampling import VERIFY_STREAM, SamplingParams, round_generator
from specgrove.tree import TokenTree, VerifyResult
from verifier.target import TargetSession

MAX_SESSIONS = 64


class VerifierWorker:
    def __init__(self, model: CausalLM, max_sessions: int = MAX_SESSIONS, min_pass_ms: float = 0.0,
                 keep_features: bool = True, max_kv_tokens: int | None = None):
        """min_pass_ms: make every pass last at least this long, emulating a target whose pass
        costs about the same for 1 token as for dozens (a large model on a GPU); tests, benchmarks.
        keep_features: keep the target's features for a feature-level draft (a served verifier
        cannot know its drafters' kind; an in-process engine without such a draft turns it off).
        max_kv_tokens: the KV budget in tokens over every session's cache; past it, the least
        recently used sessions are evicted (a later round of theirs re-prefills from its context).
        """
        self.model = model
        self.keep_features = keep_features
        self.max_kv_tokens = max_kv_tokens
        self.max_sessions = max_sessions
        self.min_pass_ms = min_pass_ms
        self._sessions: OrderedDict[str, TargetSession] = OrderedDict()
        self._released = ReleasedRuns()
        self._lock = threading.Lock()  # one forward pass at a time on this model
        self.metrics = WorkerMetrics("verify", max_sessions)

    def verify(
        self, session_id: str, step: int, context: list[int], params: SamplingParams, seed: int, tree: TokenTree,
        features_from: int | None = None, output_start: int = 0, run: str = "",
    ) -> tuple[VerifyResult, float, torch.Tensor | None]:
        """(result, verify milliseconds, features). A fresh or restarted worker prefills from
        `context`. features_from: also return the target's features of the confirmed tokens from
        that index to the last accepted one ([len(context) + accepted − features_from, H]).
        output_start: where the output begins in context (a grammar in params constrains it).
        A round older than the session's latest is refused (StaleRound): an abandoned call must
        not move a cache a newer round owns; the same round again (a retry) is served. So is a
        round of a released ``run`` (see specgrove.fence)."""
        self.check(context, tree)
        self.metrics.waiting.inc()
        with self._lock:
            self.metrics.waiting.dec()
            start = time.perf_counter()
            self._released.check(session_id, run, step)
            session = self._session(session_id)
            if step < session.step:
                raise StaleRound(f"session {session_id}: round {step} is older than round {session.step}, "
                                 "already verified here")
            session.step = step
            if session.constraint is None and params.grammar is not None:
                session.constraint = for_session(params.grammar, self.model.tokenizer, self.model.vocab_size,
                                                 output_start)
            generator = None if params.greedy else round_generator(seed, step, VERIFY_STREAM)  # greedy draws nothing
            result = session.verify_tree(context, tree, params, generator)
            spare = self.min_pass_ms / 1000 - (time.perf_counter() - start)
            if spare > 0:
                time.sleep(spare)
            features = None
            if features_from is not None:
                features = session.features(len(context) + len(result.accepted_tokens))[features_from:]
            elapsed = time.perf_counter() - start
            self.metrics.record_pass(tree.size + 1, elapsed)
            self._record_cache(self._evict(keep=session_id))
            return result, elapsed * 1000, features

    def prefix_features(self, session_id: str, context: list[int], start: int, run: str = "") -> torch.Tensor:
        """The target's features of context[start : len(context) − 1] ([n, H]); prefills as needed."""
        self.check(context, empty_tree())
        if not 0 <= start <= len(context) - 1:
            raise OutOfRange("features_from", f"must be in [0, {len(context) - 1}], got {start}")
        with self._lock:
            self._released.check(session_id, run, 0)
            session = self._session(session_id)
            if len(session.sequence.tokens) < len(context) - 1 or session.sequence.tokens[:len(context) - 1] != context[:-1]:
                session.sequence.logits_for(context, num_logits=1)
            return session.features(len(context) - 1)[start:]

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
        with self._lock:
            self._released.add(session_id, run)
            self._sessions.pop(session_id, None)
            self._record_cache()

    def _evict(self, keep: str) -> int:
        """Drop least recently used sessions until the cached tokens fit the budget (never
        ``keep``); the tokens cached afterwards."""
        total = sum(len(s.sequence.tokens) for s in self._sessions.values())
        if self.max_kv_tokens is None:
            return total
        for session_id in list(self._sessions):
            if total <= self.max_kv_tokens:
                break
            if session_id != keep:
                total -= len(self._sessions.pop(session_id).sequence.tokens)
                self.metrics.kv_evictions.inc()
        return total

    def _record_cache(self, tokens: int | None = None) -> None:
        """tokens: those cached now, when the caller just counted them."""
        if tokens is None:
            tokens = sum(len(s.sequence.tokens) for s in self._sessions.values())
        self.metrics.record_cache(len(self._sessions), tokens)

    def _session(self, session_id: str) -> TargetSession:
        session = self._sessions.pop(session_id, None) or TargetSession(self.model, self.keep_features)
        self._sessions[session_id] = session  # most recently used last
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session


_EMPTY = TokenTree(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                   torch.full((1, 1), -1, dtype=torch.long), torch.zeros(1, 1))


def empty_tree() -> TokenTree:
    """The tree of a plain decoding step (K = 0); shared, never modified."""
    return _EMPTY
