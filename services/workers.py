"""gRPC servicers of the drafter and verifier: thin (pb -> domain -> one worker call -> pb).

The drafter's rounds (drafter/round.py) reach the verifier through ``GrpcVerifier``: each round's
tree is streamed level by level as it grows (a client-streaming ``Verify`` call)."""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import replace

import grpc
from opentelemetry import context as otel_context

from drafter.guess import GuessAsk
from drafter.round import DrafterRounds
from drafter.tree_growth import Level, tree_from_levels
from drafter.worker import DrafterWorker
from orchestrator.local_verifier import LocalVerifier
from services.auth import allow_verifier
from specgrove import codec, telemetry
from specgrove.errors import InvalidArgument, StaleRound
from specgrove.limits import DEFAULT_LIMITS, Limits
from specgrove.round import Round, RoundTiming, Verdict
from specgrove.tls import open_channel
from specgrove.tree import TokenTree
from specgrove.v1 import speculate_pb2, speculate_pb2_grpc
from verifier.ahead import StepsAhead
from verifier.worker import VerifierWorker, empty_tree


class _QuietStaleRounds(logging.Filter):
    """gRPC logs any exception of a request stream's iterator. A round overtaken or released
    mid-stream (as a round run ahead past a session's end is) is expected, and reported by the
    round itself: not logged as a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StaleRound))


logging.getLogger("grpc._channel").addFilter(_QuietStaleRounds())

INFO_TIMEOUT_S = 2.0  # a drafter asking whether a verifier address is its own process's


def new_instance() -> str:
    """A worker's id (``WorkerInfo.instance``): one per server, shared by the two services of
    ``serve worker``."""
    return uuid.uuid4().hex


def worker_info(role: str, model, instance: str = "") -> speculate_pb2.WorkerInfo:
    return speculate_pb2.WorkerInfo(role=role, model=model.name, vocab_size=model.vocab_size,
                                    vocab_hash=model.vocab_hash, max_context=model.max_positions, instance=instance)


class VerifierServicer(speculate_pb2_grpc.VerifierServicer):
    def __init__(self, worker: VerifierWorker, instance: str = ""):
        self.worker, self.instance = worker, instance or new_instance()
        self.steps = StepsAhead(worker)

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
        return self._verify(first.header, self._tree(levels))

    def Decode(self, request, context):
        """A plain step; with ``ahead_room``, the next one is run at once (verifier/ahead.py)."""
        r = codec.round_from_pb(request)
        with telemetry.tracer().start_as_current_span("verify pass"):
            stepped = self.steps.decode(r, request.ahead_room)
        reply = self._reply(empty_tree(), stepped.verdict, r.features_from)
        reply.timing.ahead, reply.timing.overlap_ms = stepped.ahead, stepped.overlap_ms
        reply.timing.steps_ahead = stepped.steps_ahead
        return reply

    def Features(self, request, context):
        start = request.features_from if request.HasField("features_from") else 0
        features = self.worker.prefix_features(request.session_id, codec.unpack_ids(request.context), start,
                                               request.run)
        return codec.features_to_pb(features, start)

    def Guess(self, request, context):
        """Guessed draft-ahead: hold the guessed next rounds until the verdict they guess is in;
        verify the one that matches at once, or answer ``missed``."""
        r = codec.round_from_pb(request.round)
        guesses = [(list(guess.emitted), self._tree(guess.levels)) for guess in request.guesses]
        timeouts = [t for t in (request.timeout_ms / 1000 if request.timeout_ms else None, context.time_remaining())
                    if t is not None]
        with telemetry.tracer().start_as_current_span("verify guessed round") as span:
            context.add_callback(self.worker.wake)  # a cancelled call stops waiting for the verdict
            found = self.worker.verify_guess(r, guesses, list(request.chain) or None,
                                             min(timeouts) if timeouts else None, context.is_active)
            span.set_attributes({"specgrove.guesses": len(guesses), "specgrove.guess_hit": found is not None})
        if found is None:
            return speculate_pb2.RoundReply(missed=True)
        index, verdict = found
        features_from = len(r.context) + len(guesses[index][0]) - 1
        reply = self._reply(guesses[index][1], verdict, features_from if r.features_from is not None else None)
        reply.guess = index + 1
        return reply

    def _tree(self, levels) -> TokenTree:
        """A tree from its levels' messages, checked (InvalidArgument / OutOfRange)."""
        checked = codec.tree_levels_from_pb(levels, self.worker.model.vocab_size)
        return tree_from_levels([Level(*parts) for parts in checked])

    def _verify(self, header, tree):
        r = codec.round_from_pb(header)
        with telemetry.tracer().start_as_current_span("verify pass"):  # compute only, not the stream's arrival
            verdict = self.worker.verify(r, tree)
        return self._reply(tree, verdict, r.features_from)

    def _reply(self, tree, verdict: Verdict, features_from: int | None):
        reply = codec.result_to_pb(verdict.result, tree.size, max(tree.depths(), default=0))
        reply.timing.verify_ms = verdict.verify_ms
        reply.timing.sessions, reply.timing.pass_tokens = self.worker.load
        reply.timing.pass_rows = verdict.pass_rows
        if verdict.features is not None:
            reply.features.CopyFrom(codec.features_to_pb(verdict.features, features_from))
        return reply

    def Release(self, request, context):
        self.steps.drop(request.session_id)
        self.worker.release(request.session_id, request.run)
        return speculate_pb2.ReleaseReply()

    def Info(self, request, context):
        info = worker_info("verifier", self.worker.model, self.instance)
        info.min_pass_rows = getattr(self.worker.model, "min_pass_rows", 1)
        info.load.CopyFrom(speculate_pb2.WorkerLoad(**self.worker.load_report()))
        return info


class VerifierStubs:
    """A drafter's way to its verifiers: one channel each (TLS when configured), the bearer token
    sent on every call, and the only verifiers it may stream to (empty: any).

    local: ``(instance, verifier worker)`` of a verifier served in this process (``serve worker``).
    An address whose verifier answers ``Info`` with that instance is reached by a direct call
    (``LocalVerifier``): no hop, no copy of the tree or the features. Whatever name reaches it
    (loopback, a pod's IP, a Service), the answer tells."""

    def __init__(self, tls=None, auth_token: str | None = None, verifiers=(), channel_options=None,
                 limits: Limits = DEFAULT_LIMITS, local: tuple[str, VerifierWorker] | None = None):
        from orchestrator.placement import CHANNEL_OPTIONS, Pool

        self._tls, self._verifiers = tls, Pool(tuple(verifiers)) if verifiers else None
        self.auth = [("authorization", f"Bearer {auth_token}")] if auth_token else []
        self._options = [*(channel_options or CHANNEL_OPTIONS), *limits.grpc_options()]
        self._stubs: dict[str, speculate_pb2_grpc.VerifierStub] = {}
        self._lock = threading.Lock()
        self._instance, self._local = (local[0], LocalVerifier(local[1])) if local else ("", None)
        self._here: dict[str, bool] = {}  # address -> whether it reaches the verifier in this process

    def stub(self, address: str) -> speculate_pb2_grpc.VerifierStub:
        if self._verifiers is not None:  # the configured names, and every worker behind them now
            allow_verifier(address, {*self._verifiers.specs, *self._verifiers.addresses()})
        host = self._verifiers.hosts.get(address) if self._verifiers is not None else None
        with self._lock:
            if address not in self._stubs:
                channel = open_channel(address, self._tls, self._options, name=host)
                self._stubs[address] = speculate_pb2_grpc.VerifierStub(channel)
            return self._stubs[address]

    def port(self, address: str, timeout_s: float | None):
        """The verifier at ``address`` (``drafter.round.VerifierPort``)."""
        stub = self.stub(address)
        if self._local is not None and self._reaches_local(address, stub):
            return self._local
        return GrpcVerifier(stub, self.auth, timeout_s)

    def _reaches_local(self, address: str, stub) -> bool:
        """Whether ``address`` is this process's verifier: asked once (``Info``), then remembered.
        A failed question is asked again next time (the round itself reports the failure)."""
        here = self._here.get(address)
        if here is None:
            try:
                info = stub.Info(speculate_pb2.InfoRequest(), timeout=INFO_TIMEOUT_S, metadata=self.auth)
            except grpc.RpcError:
                return False
            here = self._here[address] = info.instance == self._instance
        return here


class GrpcVerifier:
    """The verifier over gRPC, as a drafter's round sees it (``drafter.round.VerifierPort``)."""

    in_process = False

    def __init__(self, stub: speculate_pb2_grpc.VerifierStub, auth: list, timeout_s: float | None):
        self.stub, self.auth, self.timeout_s = stub, auth, timeout_s

    def features(self, r: Round, start: int, timing: RoundTiming):
        block = self.stub.Features(codec.round_to_pb(replace(r, features_from=start)), timeout=self.timeout_s,
                                   metadata=telemetry.inject_metadata() + self.auth)
        timing.feature_bytes += block.ByteSize()
        return codec.features_from_pb(block)

    def verify(self, r: Round, levels, timing: RoundTiming) -> Verdict:
        reply = self.stub.Verify(self._messages(codec.round_to_pb(r), levels, timing), timeout=self.timeout_s,
                                 metadata=telemetry.inject_metadata() + self.auth)
        return verdict_from_reply(reply, timing)

    def guess(self, ask: GuessAsk) -> "GrpcGuessCall":
        pb = speculate_pb2.GuessRequest(timeout_ms=round(ask.wait_s * 1000) if ask.wait_s else 0, chain=ask.chain)
        pb.round.CopyFrom(codec.round_to_pb(ask.round))
        for guess in ask.guesses:
            message = pb.guesses.add(emitted=guess.emitted)
            for level in guess.levels:
                message.levels.append(codec.level_to_pb(level.tokens, level.parents, level.q_rows))
        future = self.stub.Guess.future(pb, timeout=self.timeout_s, metadata=telemetry.inject_metadata() + self.auth)
        return GrpcGuessCall(future, pb.ByteSize())

    @staticmethod
    def _messages(header, levels, timing: RoundTiming):
        """The Verify stream: the header, then each level as soon as it is drawn (on a gRPC thread)."""
        tracer, parent = telemetry.tracer(), otel_context.get_current()
        message = speculate_pb2.TreeMessage(header=header)
        while message is not None:
            timing.tree_bytes += message.ByteSize()
            yield message
            with tracer.start_as_current_span("draft level", context=parent) as span:
                level = next(levels, None)  # with the other sessions drafting now, in one draft pass
                span.set_attribute("specgrove.draft_batch", timing.draft_rows or 1)
            message = None if level is None else speculate_pb2.TreeMessage(
                level=codec.level_to_pb(level.tokens, level.parents, level.q_rows))


def verdict_from_reply(reply, timing: RoundTiming) -> Verdict:
    """The verdict in a verifier's reply; its load and the features' bytes go into ``timing``."""
    features = None
    if reply.HasField("features"):
        features = codec.features_from_pb(reply.features)[1]
        timing.feature_bytes += reply.features.ByteSize()
    timing.sessions, timing.pass_tokens = reply.timing.sessions, reply.timing.pass_tokens
    return Verdict(codec.result_from_pb(reply), reply.timing.verify_ms, features, reply.timing.pass_rows)


class GrpcGuessCall:
    """A ``Verifier.Guess`` call on its way (``drafter.guess.GuessCall``)."""

    def __init__(self, future, size: int):
        self.future, self.size = future, size

    def result(self, timeout: float | None, timing: RoundTiming) -> tuple[int, Verdict] | None:
        reply = self.future.result(timeout)
        if reply.missed or not reply.guess:
            return None
        return reply.guess - 1, verdict_from_reply(reply, timing)

    def cancel(self) -> None:
        self.future.cancel()


class DrafterServicer(speculate_pb2_grpc.DrafterServicer):
    def __init__(self, worker: DrafterWorker, stubs: VerifierStubs, model=None, instance: str = ""):
        self.worker, self.model, self.instance = worker, model, instance or new_instance()
        self.rounds = DrafterRounds(worker, stubs.port)

    def Draft(self, request, context):
        """Grow the round's tree, streaming each level to the verifier as it is drawn; return its
        verdict (drafter/round.py: a round run ahead or guessed for exactly this request is not
        drawn again)."""
        if not request.verifier:
            raise InvalidArgument("verifier", "the address of the verifier to stream to is required")
        order = codec.order_from_pb(request)  # InvalidArgument
        return codec.report_to_pb(self.rounds.draft(order, context.time_remaining()))

    def Release(self, request, context):
        self.rounds.release(request.session_id, request.run)
        return speculate_pb2.ReleaseReply()

    def Info(self, request, context):
        if self.model is None:  # the n-gram drafter has no model: report what it can
            info = speculate_pb2.WorkerInfo(role="drafter", model=self.worker.name, vocab_size=self.worker.vocab_size,
                                            instance=self.instance)
        else:
            info = worker_info("drafter", self.model, self.instance)
        info.load.CopyFrom(speculate_pb2.WorkerLoad(**self.worker.load_report()))
        return info
