"""The verifier worker's logic, free of gRPC: per-session target KV caches (LRU), one verify
pass per round on a tree received level by level, or one plain decoding step (K = 0)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import torch

from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.grammar import for_session
from specgrove.metrics import WorkerMetrics
from specgrove.models import CausalLM
from specgrove.sampling import VERIFY_STREAM, SamplingParams, round_generator
from specgrove.tree import TokenTree, VerifyResult
from verifier.target import TargetSession

MAX_SESSIONS = 64


class VerifierWorker:
    def __init__(self, model: CausalLM, max_sessions: int = MAX_SESSIONS, min_pass_ms: float = 0.0):
        """min_pass_ms: make every pass last at least this long, emulating a target whose pass
        costs about the same for 1 token as for dozens (a large model on a GPU); tests, benchmarks."""
        self.model = model
        self.max_sessions = max_sessions
        self.min_pass_ms = min_pass_ms
        self._sessions: OrderedDict[str, TargetSession] = OrderedDict()
        self._lock = threading.Lock()  # one forward pass at a time on this model
        self.metrics = WorkerMetrics("verify", max_sessions)

    def verify(
        self, session_id: str, step: int, context: list[int], params: SamplingParams, seed: int, tree: TokenTree,
        features_from: int | None = None, output_start: int = 0,
    ) -> tuple[VerifyResult, float, torch.Tensor | None]:
        """(result, verify milliseconds, features). A fresh or restarted worker prefills from
        `context`. features_from: also return the target's features of the confirmed tokens from
        that index to the last accepted one ([len(context) + accepted − features_from, H]).
        output_start: where the output begins in context (a grammar in params constrains it)."""
        self.check(context, tree)
        self.metrics.waiting.inc()
        with self._lock:
            self.metrics.waiting.dec()
            start = time.perf_counter()
            session = self._session(session_id)
            if session.constraint is None and params.grammar is not None:
                session.constraint = for_session(params.grammar, self.model.tokenizer, self.model.vocab_size,
                                                 output_start)
            result = session.verify_tree(context, tree, params, round_generator(seed, step, VERIFY_STREAM))
            spare = self.min_pass_ms / 1000 - (time.perf_counter() - start)
            if spare > 0:
                time.sleep(spare)
            features = None
            if features_from is not None:
                features = session.features(len(context) + len(result.accepted_tokens))[features_from:]
            elapsed = time.perf_counter() - start
            self.metrics.record_pass(tree.size + 1, elapsed)
            self._record_cache()
            return result, elapsed * 1000, features

    def prefix_features(self, session_id: str, context: list[int], start: int) -> torch.Tensor:
        """The target's features of context[start : len(context) − 1] ([n, H]); prefills as needed."""
        self.check(context, empty_tree())
        if not 0 <= start <= len(context) - 1:
            raise OutOfRange("features_from", f"must be in [0, {len(context) - 1}], got {start}")
        with self._lock:
            session = self._session(session_id)
            if len(session.sequence.tokens) < len(context) - 1 or session.sequence.tokens[:len(context) - 1] != context[:-1]:
                session.sequence.logits_for(context, num_logits=1)
            return session.features(len(context) - 1)[start:]

    def check(self, context: list[int], tree: TokenTree) -> None:
        vocab = self.model.vocab_size
        if not context:
            raise InvalidArgument("context", "must hold at least one token")
        if any(not 0 <= t < vocab for t in context) or any(not 0 <= t < vocab for t in tree.tokens.tolist()):
            raise OutOfRange("tokens", f"token ids must be in [0, {vocab})")
        if len(context) + tree.size > self.model.max_positions:
            raise OutOfRange("context", f"{len(context)} tokens + {tree.size} nodes exceed the target's "
                                        f"context of {self.model.max_positions}")

    def release(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
            self._record_cache()

    def _record_cache(self) -> None:
        self.metrics.record_cache(len(self._sessions), sum(len(s.sequence.tokens) for s in self._sessions.values()))

    def _session(self, session_id: str) -> TargetSession:
        session = self._sessions.pop(session_id, None) or TargetSession(self.model, keep_features=True)
        self._sessions[session_id] = session  # most recently used last
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session


def empty_tree() -> TokenTree:
    return TokenTree(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                     torch.full((1, 1), -1, dtype=torch.long), torch.zeros(1, 1))
