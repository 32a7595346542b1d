"""gRPC servicers of the drafter and verifier: thin (pb -> domain -> one worker call -> pb).

The drafter streams each round's tree to the verifier level by level as it grows (a client-
streaming ``Verify`` call), then trims its own cache to the accepted path."""

from __future__ import annotations

import threading
import time

import grpc
from opentelemetry import context as otel_context

from drafter.model_drafter import Level, tree_from_levels
from drafter.worker import DrafterWorker
from specgrove import codec, telemetry
from specgrove.errors import InvalidArgument
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc
from verifier.worker import VerifierWorker, empty_tree


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
        try:
            levels = []
            for message in messages:
                if not message.HasField("level"):
                    raise InvalidArgument("tree", "only one header per stream")
                levels.append(Level(*codec.level_from_pb(message.level)))
            tree = tree_from_levels(levels)
        except (AssertionError, RuntimeError, IndexError, ValueError) as exc:
            raise InvalidArgument("tree", f"malformed tree: {exc}") from exc
        return self._verify(first.header, tree)

    def Decode(self, request, context):
        return self._verify(request, empty_tree())

    def Features(self, request, context):
        start = request.features_from if request.HasField("features_from") else 0
        features = self.worker.prefix_features(request.session_id, codec.unpack_ids(request.context), start)
        return codec.features_to_pb(features, start)

    def _verify(self, header, tree):
        features_from = header.features_from if header.HasField("features_from") else None
        with telemetry.tracer().start_as_current_span("verify pass"):  # compute only, not the stream's arrival
            result, verify_ms, features = self.worker.verify(
                header.session_id, header.step, codec.unpack_ids(header.context),
                codec.params_from_pb(header.sampling), header.seed, tree, features_from, header.output_start,
            )
        reply = codec.result_to_pb(result, tree.size, max(tree.depths(), default=0))
        reply.timing.verify_ms = verify_ms
        if features is not None:
            reply.features.CopyFrom(codec.features_to_pb(features, features_from))
        return reply

    def Release(self, request, context):
        self.worker.release(request.session_id)
        return speculate_pb2.ReleaseReply()

    def Info(self, request, context):
        return worker_info("verifier", self.worker.model)


class DrafterServicer(speculate_pb2_grpc.DrafterServicer):
    def __init__(self, worker: DrafterWorker, model=None, channel_options=None, auth_token: str | None = None):
        self.worker = worker
        self._auth = [("authorization", f"Bearer {auth_token}")] if auth_token else []
        self.model = model
        self._stubs: dict[str, speculate_pb2_grpc.VerifierStub] = {}
        self._stubs_lock = threading.Lock()
        from orchestrator.pipeline import CHANNEL_OPTIONS

        self._channel_options = channel_options or CHANNEL_OPTIONS

    def _verifier(self, address: str) -> speculate_pb2_grpc.VerifierStub:
        with self._stubs_lock:
            if address not in self._stubs:
                self._stubs[address] = speculate_pb2_grpc.VerifierStub(
                    grpc.insecure_channel(address, options=self._channel_options))
            return self._stubs[address]

    def Draft(self, request, context):
        r = request.round
        if not request.verifier:
            raise InvalidArgument("verifier", "the address of the verifier to stream to is required")
        params = codec.params_from_pb(r.sampling)
        budget = codec.budget_from_pb(request.plan)
        started = time.perf_counter()
        timing = {"draft_ms": 0.0, "bytes": 0, "size": 0, "depth": 0, "feature_bytes": 0}
        ids = codec.unpack_ids(r.context)
        verifier = self._verifier(request.verifier)
        header_round = speculate_pb2.RoundContext()
        header_round.CopyFrom(r)
        fetch = None
        if self.worker.needs_features:  # the verifier answers with the new tokens' features
            header_round.features_from = len(ids) - 1

            def fetch(start: int):
                ask = speculate_pb2.RoundContext(session_id=r.session_id, step=r.step, context=r.context,
                                                 features_from=start)
                block = verifier.Features(ask, timeout=context.time_remaining(),
                                          metadata=telemetry.inject_metadata() + self._auth)
                timing["feature_bytes"] += block.ByteSize()
                return codec.features_from_pb(block)

        levels = self.worker.levels(r.session_id, r.step, ids, params, r.seed, list(request.plan.shape_parents),
                                    budget, fetch, r.output_start)
        tracer = telemetry.tracer()
        parent = otel_context.get_current()  # the messages are pulled on a gRPC thread

        def messages():
            header = speculate_pb2.TreeMessage(header=header_round)
            timing["bytes"] += header.ByteSize()
            yield header
            while True:
                with tracer.start_as_current_span("draft level", context=parent), self.worker.lock:
                    t0 = time.perf_counter()  # the model is shared by sessions: one level at a time
                    level = next(levels, None)
                    timing["draft_ms"] += (time.perf_counter() - t0) * 1000
                if level is None:
                    return
                timing["size"] += len(level.tokens)
                timing["depth"] += 1
                message = speculate_pb2.TreeMessage(level=codec.level_to_pb(level.tokens, level.parents, level.q_rows))
                timing["bytes"] += message.ByteSize()
                yield message

        timeouts = [t for t in (request.verify_timeout_ms / 1000 if request.verify_timeout_ms else None,
                                context.time_remaining()) if t is not None]
        reply = verifier.Verify(messages(), timeout=min(timeouts) if timeouts else None,
                                metadata=telemetry.inject_metadata() + self._auth)
        features = codec.features_from_pb(reply.features) if reply.HasField("features") else None
        timing["feature_bytes"] += reply.features.ByteSize() if features is not None else 0
        reply.ClearField("features")  # the drafter's business, not the orchestrator's
        with self.worker.lock:
            self.worker.accept(r.session_id, codec.result_from_pb(reply), features)
        telemetry.trace.get_current_span().set_attributes({
            "specgrove.tree_bytes": timing["bytes"], "specgrove.tree_size": timing["size"]})
        reply.timing.draft_ms = timing["draft_ms"]
        reply.timing.tree_bytes = timing["bytes"]
        reply.timing.feature_bytes = timing["feature_bytes"]
        reply.timing.round_ms = (time.perf_counter() - started) * 1000
        self.worker.metrics.record_pass(timing["size"], timing["draft_ms"] / 1000)
        return reply

    def Release(self, request, context):
        self.worker.release(request.session_id)
        return speculate_pb2.ReleaseReply()

    def Info(self, request, context):
        if self.model is None:  # the n-gram drafter has no model: report what it can
            return speculate_pb2.WorkerInfo(role="drafter", model=self.worker.name, vocab_size=self.worker.vocab_size)
        return worker_info("drafter", self.model)
