"""gRPC servicers of the drafter and verifier: thin (pb -> domain -> one worker call -> pb).

The drafter streams each round's tree to the verifier level by level as it grows (a client-
streaming ``Verify`` call), then trims its own cache to the accepted path."""

from __future__ import annotations

import logging
import threading
import time

import grpc

from opentelemetry import context as otel_context

from drafter.ahead import AheadRounds
from drafter.model_drafter import Level, tree_from_levels
from drafter.worker import DrafterWorker
from services.auth import allow_verifier
from specgrove import codec, telemetry
from specgrove.errors import InvalidArgument, StaleRound
from specgrove.limits import DEFAULT_LIMITS, Limits
from specgrove.tls import open_channel
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc
from verifier.worker import VerifierWorker, empty_tree


class _QuietStaleRounds(logging.Filter):
    """gRPC logs any exception of a request stream's iterator. A round overtaken or released
    mid-stream (as a round run ahead past a session's end is) is expected, and reported by the
    round itself: not logged as a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StaleRound))


logging.getLogger("grpc._channel").addFilter(_QuietStaleRounds())


def worker_info(role: str, model) -> speculate_pb2.WorkerInfo:
    return speculate_pb2.WorkerInfo(role=role, model=model.name, vocab_size=model.vocab_size,
                                    vocab_hash=model.vocab_hash, max_context=model.max_positions)


class VerifierServicer(speculate_pb2_grpc.VerifierServicer):
    def __init__(self, worker: VerifierWorker):
        self.worker = worker

    def Verify(self, request_iterator, context):
        messages = iter(request_iterator)
        first = next(messages, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("tree", "the stream must start with a header")
        levels = []
        for message in messages:
            if not message.HasField("level"):
                raise InvalidArgument("tree", "only one header per stream")
            levels.append(message.level)
        checked = codec.tree_levels_from_pb(levels, self.worker.model.vocab_size)  # InvalidArgument / OutOfRange
        tree = tree_from_levels([Level(*parts) for parts in checked])
        return self._verify(first.header, tree)

    def Decode(self, request, context):
        return self._verify(request, empty_tree())

    def Features(self, request, context):
        start = request.features_from if request.HasField("features_from") else 0
        features = self.worker.prefix_features(request.session_id, codec.unpack_ids(request.context), start,
                                               request.run)
        return codec.features_to_pb(features, start)

    def _verify(self, header, tree):
        features_from = header.features_from if header.HasField("features_from") else None
        with telemetry.tracer().start_as_current_span("verify pass"):  # compute only, not the stream's arrival
            result, verify_ms, features, pass_rows = self.worker.verify(
                header.session_id, header.step, codec.unpack_ids(header.context),
                codec.params_from_pb(header.sampling), header.seed, tree, features_from, header.output_start,
                header.run,
            )
        reply = codec.result_to_pb(result, tree.size, max(tree.depths(), default=0))
        reply.timing.verify_ms = verify_ms
        reply.timing.sessions, reply.timing.pass_tokens = self.worker.load
        reply.timing.pass_rows = pass_rows
        if features is not None:
            reply.features.CopyFrom(codec.features_to_pb(features, features_from))
        return reply

    def Release(self, request, context):
        self.worker.release(request.session_id, request.run)
        return speculate_pb2.ReleaseReply()

    def Info(self, request, context):
        return worker_info("verifier", self.worker.model)


class DrafterServicer(speculate_pb2_grpc.DrafterServicer):
    def __init__(self, worker: DrafterWorker, model=None, channel_options=None, auth_token: str | None = None,
                 tls=None, verifiers=(), limits: Limits = DEFAULT_LIMITS):
        self.worker = worker
        self._tls, self._verifiers = tls, frozenset(verifiers)  # verifiers: the only ones it streams to (empty: any)
        self._auth = [("authorization", f"Bearer {auth_token}")] if auth_token else []
        self.model = model
        self._stubs: dict[str, speculate_pb2_grpc.VerifierStub] = {}
        self._stubs_lock = threading.Lock()
        self._ahead = AheadRounds(worker.max_sessions, worker.metrics)
        from orchestrator.pipeline import CHANNEL_OPTIONS

        self._channel_options = [*(channel_options or CHANNEL_OPTIONS), *limits.grpc_options()]  # to the verifiers

    def _verifier(self, address: str) -> speculate_pb2_grpc.VerifierStub:
        allow_verifier(address, self._verifiers)
        with self._stubs_lock:
            if address not in self._stubs:
                self._stubs[address] = speculate_pb2_grpc.VerifierStub(
                    open_channel(address, self._tls, self._channel_options))
            return self._stubs[address]

    def Draft(self, request, context):
        """Grow the round's tree, streaming each level to the verifier as it is drawn; return its
        verdict. A round drawn ahead for exactly this request is not drawn again: its verdict is
        returned (waiting for it if it is still on its way)."""
        r = request.round
        if not request.verifier:
            raise InvalidArgument("verifier", "the address of the verifier to stream to is required")
        reply = self._ahead.take(request, time.perf_counter())
        if reply is None:
            reply = self._round(request, context.time_remaining())
        if request.ahead:
            self._ahead.start(request, reply, self._round)
        return reply

    def _round(self, request, time_remaining: float | None):
        """One round: draw its levels, stream them to the verifier, take the verdict."""
        r = request.round
        verifier = self._verifier(request.verifier)
        ids = codec.unpack_ids(r.context)
        header = speculate_pb2.RoundContext()
        header.CopyFrom(r)
        timing = {"draft_ms": 0.0, "bytes": 0, "size": 0, "depth": 0, "feature_bytes": 0}
        timeouts = [t for t in (request.verify_timeout_ms / 1000 if request.verify_timeout_ms else None,
                                time_remaining) if t is not None]
        timeout = min(timeouts) if timeouts else None
        if self.worker.needs_features:  # the verifier answers with the new tokens' features
            header.features_from = len(ids) - 1
            self.worker.prefetch_features(r.session_id, r.step, ids, self._feature_fetcher(verifier, r, timeout, timing),
                                          r.run)  # not under the model's lock
        levels = self.worker.levels(r.session_id, r.step, ids, codec.params_from_pb(r.sampling), r.seed,
                                    list(request.plan.shape_parents), codec.budget_from_pb(request.plan),
                                    r.output_start, r.run, timing)
        started = time.perf_counter()
        try:
            reply = verifier.Verify(self._messages(header, levels, timing), timeout=timeout,
                                    metadata=telemetry.inject_metadata() + self._auth)
        except grpc.RpcError:
            if "stale" in timing:  # the round was overtaken or released mid-stream: say so, not UNKNOWN
                raise timing["stale"] from None
            raise
        return self._finish(r, reply, timing, started)

    def _feature_fetcher(self, verifier, r, timeout: float | None, timing: dict):
        def fetch(start: int):  # the target's features of context[start:−1], asked of the verifier
            ask = speculate_pb2.RoundContext(session_id=r.session_id, step=r.step, context=r.context,
                                             features_from=start, run=r.run)
            block = verifier.Features(ask, timeout=timeout,
                                      metadata=telemetry.inject_metadata() + self._auth)
            timing["feature_bytes"] += block.ByteSize()
            return codec.features_from_pb(block)

        return fetch

    def _messages(self, header, levels, timing: dict):
        """The Verify stream: the header, then each level as soon as it is drawn (on a gRPC thread)."""
        tracer, parent = telemetry.tracer(), otel_context.get_current()
        message = speculate_pb2.TreeMessage(header=header)
        while message is not None:
            timing["bytes"] += message.ByteSize()
            yield message
            with tracer.start_as_current_span("draft level", context=parent) as span:
                try:  # with the other sessions drafting now, in one draft pass (``draft_ms``: that pass's time)
                    level = next(levels, None)
                except StaleRound as exc:  # gRPC cancels the stream; the round raises it (``_round``)
                    timing["stale"] = exc
                    raise
                span.set_attribute("specgrove.draft_batch", timing.get("draft_rows", 1))
            message = None
            if level is not None:
                timing["size"] += len(level.tokens)
                timing["depth"] += 1
                message = speculate_pb2.TreeMessage(level=codec.level_to_pb(level.tokens, level.parents, level.q_rows))

    def _finish(self, r, reply, timing: dict, started: float):
        """Trim the draft cache to the verdict (this round's only), and report the round's costs."""
        features = codec.features_from_pb(reply.features) if reply.HasField("features") else None
        timing["feature_bytes"] += reply.features.ByteSize() if features is not None else 0
        reply.ClearField("features")  # the drafter's business, not the orchestrator's
        with self.worker.lock:
            self.worker.accept(r.session_id, r.step, codec.result_from_pb(reply), features)
        telemetry.trace.get_current_span().set_attributes({
            "specgrove.tree_bytes": timing["bytes"], "specgrove.tree_size": timing["size"]})
        reply.timing.draft_ms = timing["draft_ms"]
        reply.timing.tree_bytes = timing["bytes"]
        reply.timing.feature_bytes = timing["feature_bytes"]
        reply.timing.round_ms = (time.perf_counter() - started) * 1000
        self.worker.metrics.record_pass(timing["size"], timing["draft_ms"] / 1000, batch=None)  # the batcher's
        return reply

    def Release(self, request, context):
        self.worker.release(request.session_id, request.run)
        self._ahead.drop(request.session_id)
        return speculate_pb2.ReleaseReply()

    def Info(self, request, context):
        if self.model is None:  # the n-gram drafter has no model: report what it can
            return speculate_pb2.WorkerInfo(role="drafter", model=self.worker.name, vocab_size=self.worker.vocab_size)
        return worker_info("drafter", self.model)
