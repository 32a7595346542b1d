"""gRPC servicers of the drafter and verifier: thin (pb -> domain -> one worker call -> pb).

The drafter streams each round's tree to the verifier level by level as it grows (a client-
streaming ``Verify`` call), then trims its own cache to the accepted path."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from opentelemetry import context as otel_context

from drafter.ahead import AheadRounds, next_max_len
from drafter.guess import Guess
from drafter.tree_growth import Level, tree_from_levels
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
log = logging.getLogger(__name__)
GUESS_WAIT_S = 30.0  # the longest a guesser waits for its round to be drawn here


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

    def Guess(self, request, context):
        """Guessed draft-ahead: hold the guessed next rounds until the verdict they guess is in;
        verify the one that matches at once, or answer ``missed``."""
        header = request.round
        vocab = self.worker.model.vocab_size
        guesses = []
        for guess in request.guesses:
            checked = codec.tree_levels_from_pb(guess.levels, vocab)  # InvalidArgument / OutOfRange
            guesses.append((list(guess.emitted), tree_from_levels([Level(*parts) for parts in checked])))
        timeouts = [t for t in (request.timeout_ms / 1000 if request.timeout_ms else None, context.time_remaining())
                    if t is not None]
        with telemetry.tracer().start_as_current_span("verify guessed round") as span:
            context.add_callback(self.worker.wake)  # a cancelled call stops waiting for the verdict
            found = self.worker.verify_guess(
                header.session_id, header.step, codec.unpack_ids(header.context), guesses,
                codec.params_from_pb(header.sampling), header.seed, header.HasField("features_from"),
                header.output_start, header.run, min(timeouts) if timeouts else None, context.is_active,
                list(request.chain) or None)
            span.set_attributes({"specgrove.guesses": len(guesses), "specgrove.guess_hit": found is not None})
        if found is None:
            return speculate_pb2.RoundReply(missed=True)
        index, answer = found
        features_from = len(codec.unpack_ids(header.context)) + len(guesses[index][0]) - 1
        reply = self._reply(guesses[index][1], answer, features_from if header.HasField("features_from") else None)
        reply.guess = index + 1
        return reply

    def _verify(self, header, tree):
        features_from = header.features_from if header.HasField("features_from") else None
        with telemetry.tracer().start_as_current_span("verify pass"):  # compute only, not the stream's arrival
            answer = self.worker.verify(
                header.session_id, header.step, codec.unpack_ids(header.context),
                codec.params_from_pb(header.sampling), header.seed, tree, features_from, header.output_start,
                header.run,
            )
        return self._reply(tree, answer, features_from)

    def _reply(self, tree, answer, features_from):
        result, verify_ms, features, pass_rows = answer
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
        self._flights: dict[str, _Flight] = {}  # session -> its latest round drawn here (guessed draft-ahead)
        self._guessed: dict[str, _Guessed] = {}  # session -> the guesses sent for its next round
        self._guessing: dict[str, int] = {}  # session -> the latest round whose verdict it guessed (or guesses)
        self._withdrawn: dict[str, int] = {}  # session -> the latest round whose next one had no leave
        self._flight_turn = threading.Condition()
        self._guessers = ThreadPoolExecutor(max_workers=max(1, worker.max_sessions), thread_name_prefix="guess")
        from orchestrator.placement import CHANNEL_OPTIONS

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
        arrived = time.perf_counter()
        if request.ahead and request.guess:
            self._start_guessing(request, context.time_remaining())  # unless it is guessed already
        else:  # no leave for the next round: guesses presumed for it are withdrawn
            self._withdraw_guesses(r.session_id, r.step)
        reply = self._ahead.take(request, arrived)
        if reply is None:
            reply = self._round(request, context.time_remaining())
        if request.ahead:
            self._ahead.start(request, reply, self._next_round)
        return reply

    def _next_round(self, request, time_remaining: float | None):
        """A round run ahead: the verifier's verdict on the guess that matched this round's
        context, when one did (it started the round itself); else the round drawn afresh."""
        r = request.round
        with self._flight_turn:
            guessed = self._guessed.pop(r.session_id, None)
        found = guessed.by_context.get(r.context) if guessed is not None and guessed.step == r.step else None
        if guessed is not None:
            self.worker.metrics.guessed_rounds.labels(outcome="hit" if found is not None else "miss").inc()
            if found is None:
                guessed.future.cancel()
        if request.guess:  # presumed leave for the round after: the orchestrator withdraws it if it must
            self._start_guessing(request, time_remaining)
        if found is None:
            return self._round(request, time_remaining)
        index, hit = found
        flight = self._fly(r.session_id, r.step, codec.unpack_ids(r.context))
        self._landed(flight, [level.tokens[0] for level in hit.levels])
        started = time.perf_counter()
        try:
            reply = guessed.future.result(time_remaining)
        except Exception as exc:  # noqa: BLE001 - RpcError, a timeout: the round is drawn afresh
            guessed.future.cancel()
            log.info("guessed round %d of session %s failed (%s); drafting it afresh", r.step, r.session_id, exc)
            reply = None
        finally:
            self._done(flight)
        if reply is None or reply.missed or reply.guess != index + 1:  # only the very guess that matched
            return self._round(request, time_remaining)
        self.worker.claim(r.session_id, r.step, r.run)
        timing = {"draft_ms": guessed.draft_ms / guessed.count, "bytes": guessed.bytes, "size": len(hit.levels),
                  "feature_bytes": 0}  # drawing the guesses, one guess's share (hidden under the last pass)
        reply = self._finish(r, reply, timing, started)
        reply.timing.guessed, reply.timing.guesses = True, guessed.count
        return reply

    def _start_guessing(self, request, time_remaining: float | None) -> None:
        """Guess the verdict of ``request``'s round (in the background), unless that is under way.

        A round run ahead guesses at once, before the orchestrator's request for it comes with
        leave for the next round: that request arrives two hops after the previous verdict, too
        late to draw guesses and send them before the pass ends. The leave is presumed, and
        withdrawn (``_withdraw_guesses``) when the request comes without it."""
        r = request.round
        if not _is_chain(request.plan.shape_parents):
            return
        with self._flight_turn:
            if self._guessing.get(r.session_id) == r.step or self._withdrawn.get(r.session_id) == r.step:
                return
            self._guessing[r.session_id] = r.step
        self._guessers.submit(self._guess, request, otel_context.get_current(), time_remaining)

    def _withdraw_guesses(self, session_id: str, step: int) -> None:
        """Round ``step`` has no leave for the next one: stop guessing it, cancel guesses sent."""
        with self._flight_turn:
            self._withdrawn[session_id] = step  # a presumed guesser not started yet stays away
            if self._guessing.get(session_id) == step:
                del self._guessing[session_id]
            guessed = self._guessed.get(session_id)
            if guessed is not None and guessed.step == step + 1:
                del self._guessed[session_id]
                guessed.future.cancel()  # the verifier drops them (unless the verdict already took one)

    def _guess(self, request, parent, time_remaining: float | None) -> None:
        """Guessed draft-ahead: once this round's chain is drawn, and while its verdict is not in,
        draw the next round under each likely verdict and send the guesses to the verifier."""
        token = otel_context.attach(parent)
        try:
            r = request.round
            wait = min(time_remaining if time_remaining is not None else GUESS_WAIT_S, GUESS_WAIT_S)
            with self._flight_turn:  # the round is drawn here (afresh or ahead), or already done
                self._flight_turn.wait_for(lambda: self._drawn(r.session_id, r.step), wait)
                flight = self._flights.get(r.session_id)
            if flight is None or flight.step != r.step or flight.done or not flight.chain:
                return
            max_lens = [max(0, next_max_len(request, j + 1)) for j in range(len(flight.chain) + 1)]

            def wanted() -> bool:  # neither the verdict came nor the leave was withdrawn
                return not flight.done and self._guessing.get(r.session_id) == r.step

            started = time.perf_counter()
            with telemetry.tracer().start_as_current_span("drafter guesses", attributes={
                    "specgrove.session_id": r.session_id, "specgrove.step": r.step + 1}) as span:
                guesses = self.worker.guesses(r.session_id, r.step, flight.context, flight.chain,
                                              codec.params_from_pb(r.sampling), r.seed, max_lens,
                                              codec.budget_from_pb(request.plan), wanted)
                span.set_attribute("specgrove.guesses", len(guesses))
            if not guesses:
                if flight.done:
                    self.worker.metrics.guessed_rounds.labels(outcome="late").inc()
                return
            draft_ms = (time.perf_counter() - started) * 1000
            ask = speculate_pb2.GuessRequest(timeout_ms=request.verify_timeout_ms, chain=flight.chain)
            ask.round.CopyFrom(r)
            ask.round.step = r.step + 1
            if self.worker.needs_features:
                ask.round.features_from = 0  # set: the reply carries the guessed round's new features
            for guess in guesses:
                pb = ask.guesses.add(emitted=guess.emitted)
                for level in guess.levels:
                    pb.levels.append(codec.level_to_pb(level.tokens, level.parents, level.q_rows))
            by_context = {codec.pack_ids(flight.context + g.emitted): (i, g) for i, g in enumerate(guesses)}
            verifier = self._verifier(request.verifier)
            with self._flight_turn:
                if self._guessing.get(r.session_id) != r.step:  # withdrawn
                    return
                if flight.done:  # the verdict came first: the guesses are of no use
                    self.worker.metrics.guessed_rounds.labels(outcome="late").inc()
                    return
                timeout = request.verify_timeout_ms / 1000 if request.verify_timeout_ms else time_remaining
                future = verifier.Guess.future(ask, timeout=timeout,  # it answers with the next round's verdict
                                               metadata=telemetry.inject_metadata() + self._auth)
                previous = self._guessed.pop(r.session_id, None)
                if previous is not None:
                    previous.future.cancel()
                self._guessed[r.session_id] = _Guessed(r.step + 1, by_context, future, draft_ms, ask.ByteSize(),
                                                       len(guesses))
        except Exception:  # noqa: BLE001 - a guess is an optimisation: the round is drawn afresh without it
            log.exception("guessing the next round of session %s failed", request.round.session_id)
        finally:
            otel_context.detach(token)

    def _drawn(self, session_id: str, step: int) -> bool:
        flight = self._flights.get(session_id)
        return flight is not None and (flight.step > step or (flight.step == step and (flight.drawn or flight.done)))

    def _fly(self, session_id: str, step: int, context: list[int]) -> "_Flight":
        flight = _Flight(step, context)
        with self._flight_turn:
            self._flights[session_id] = flight
            self._flight_turn.notify_all()
        return flight

    def _landed(self, flight: "_Flight | None", chain: list[int] | None) -> None:
        """The flight's tree is drawn (``chain``: its tokens when it is a chain, else None)."""
        if flight is None:
            return
        with self._flight_turn:
            flight.chain, flight.drawn = chain, True
            self._flight_turn.notify_all()

    def _done(self, flight: "_Flight | None") -> None:
        if flight is None:
            return
        with self._flight_turn:
            flight.done = True
            self._flight_turn.notify_all()

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
        flight = self._fly(r.session_id, r.step, ids) if request.guess else None  # only guessers read flights
        started = time.perf_counter()
        try:
            reply = verifier.Verify(self._messages(header, levels, timing, flight), timeout=timeout,
                                    metadata=telemetry.inject_metadata() + self._auth)
        except grpc.RpcError:
            if "stale" in timing:  # the round was overtaken or released mid-stream: say so, not UNKNOWN
                raise timing["stale"] from None
            raise
        finally:
            self._done(flight)
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

    def _messages(self, header, levels, timing: dict, flight: "_Flight | None"):
        """The Verify stream: the header, then each level as soon as it is drawn (on a gRPC thread).
        When the last is drawn, ``flight`` (if any) learns the tree (its tokens, if it is a chain)."""
        tracer, parent = telemetry.tracer(), otel_context.get_current()
        message = speculate_pb2.TreeMessage(header=header)
        chain: list[int] | None = []
        try:
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
                    if chain is not None and len(level.tokens) == 1 and level.parents[0] == len(chain) - 1:
                        chain.append(level.tokens[0])
                    else:
                        chain = None
                    message = speculate_pb2.TreeMessage(level=codec.level_to_pb(level.tokens, level.parents, level.q_rows))
        except BaseException:
            chain = None  # cut short (stale, cancelled): no verdict to guess
            raise
        finally:
            self._landed(flight, chain)

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
        with self._flight_turn:
            guessed = self._guessed.pop(request.session_id, None)
            if guessed is not None:
                guessed.future.cancel()
            self._guessing.pop(request.session_id, None)
            self._withdrawn.pop(request.session_id, None)
            flight = self._flights.pop(request.session_id, None)
            if flight is not None:
                flight.done = True  # a guesser drawing for it stops
            self._flight_turn.notify_all()
        return speculate_pb2.ReleaseReply()

    def Info(self, request, context):
        if self.model is None:  # the n-gram drafter has no model: report what it can
            return speculate_pb2.WorkerInfo(role="drafter", model=self.worker.name, vocab_size=self.worker.vocab_size)
        return worker_info("drafter", self.model)


def _is_chain(shape_parents) -> bool:
    return all(p == i - 1 for i, p in enumerate(shape_parents))


@dataclass
class _Flight:
    """A round drawn on this drafter: its context, then its chain once drawn, then its verdict."""

    step: int
    context: list[int]
    chain: list[int] | None = None  # the drawn chain's tokens (None: a tree, or nothing drawn)
    drawn: bool = False
    done: bool = False  # the verdict is in (or the round failed)


@dataclass
class _Guessed:
    """Guesses sent for a session's round ``step``: each by the context it guesses, and the
    verifier's answer (``future``)."""

    step: int
    by_context: dict[bytes, tuple[int, Guess]]  # by the context it guesses: (its index, the guess)
    future: object
    draft_ms: float
    bytes: int
    count: int
