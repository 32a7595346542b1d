"""Servers of the three roles, and of a drafter and verifier in one process:
``create_*_server(addr, ...) -> (server, port)`` (tests bind port 0), each with the
error/tracing/auth interceptor, ``grpc.health.v1`` and server reflection."""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.interceptors import AioServerInterceptor, ServerInterceptor
from specgrove.limits import DEFAULT_LIMITS, Limits
from specgrove.tls import TlsConfig, add_port
from specgrove.v1 import generate_pb2, generate_pb2_grpc, speculate_pb2, speculate_pb2_grpc


class LinkDelay(grpc.ServerInterceptor):
    """An emulated remote drafter (tests, benchmarks): its links have a one-way latency of
    ``delay_ms``. Every message of the calls in ``methods`` reaches the handler that long after it
    arrived and every reply leaves that long late. Messages in flight overlap, as on a wire: a
    tree level sent while the previous one travels arrives ``delay_ms`` after it was sent, not
    after the previous one. On the verifier the drafter's calls (Verify, Features, Guess) are delayed,
    not the orchestrator's plain steps (Decode: the orchestrator is taken to sit beside the
    verifier); on the drafter, the orchestrator's Draft. The waits happen in the call's own
    handler thread (and one reader thread per Verify stream), so other calls are not held up."""

    def __init__(self, delay_ms: float, methods: tuple[str, ...] = ("/Verify", "/Features", "/Guess")):
        self.delay_s = delay_ms / 1000
        self.methods = methods

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if self.delay_s <= 0 or handler is None or not details.method.endswith(self.methods):
            return handler
        delay = self.delay_s
        if handler.request_streaming:
            behavior = handler.stream_unary

            def delayed(request_iterator, context):
                reply = behavior(_arriving(request_iterator, delay), context)
                time.sleep(delay)  # the reply's way back
                return reply

            wrap = grpc.stream_unary_rpc_method_handler
        else:
            behavior = handler.unary_unary

            def delayed(request, context):
                time.sleep(delay)  # the request's way here
                reply = behavior(request, context)
                time.sleep(delay)
                return reply

            wrap = grpc.unary_unary_rpc_method_handler
        return wrap(delayed, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


def _arriving(messages, delay_s: float):
    """``messages`` as a link of one-way latency ``delay_s`` delivers them: each one ``delay_s``
    after gRPC received it. A reader thread takes them as they come, so their times are true."""
    arrived: queue.SimpleQueue = queue.SimpleQueue()

    def read():
        try:
            for message in messages:
                arrived.put((time.monotonic() + delay_s, message, None))
        except BaseException as exc:  # noqa: BLE001 - the stream broke: the handler sees it, late like the rest
            arrived.put((time.monotonic() + delay_s, None, exc))
            return
        arrived.put((time.monotonic() + delay_s, None, None))

    threading.Thread(target=read, name="link-delay", daemon=True).start()
    while True:
        due, message, error = arrived.get()
        time.sleep(max(0.0, due - time.monotonic()))
        if error is not None:
            raise error
        if message is None:
            return
        yield message


def _health(server, names: list[str], aio: bool):
    servicer = health.aio.HealthServicer() if aio else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return servicer


_ADD_SERVICER = {"Verifier": speculate_pb2_grpc.add_VerifierServicer_to_server,
                 "Drafter": speculate_pb2_grpc.add_DrafterServicer_to_server}


def _worker_server(addr: str, servicers: dict, link_delay: LinkDelay, auth_token: str | None, threads: int,
                   tls: TlsConfig | None, limits: Limits):
    """A sync server of ``servicers`` ({service name: servicer}), each reported SERVING by health
    (``drain`` reports NOT_SERVING through ``server.specgrove_health``)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         interceptors=[link_delay, ServerInterceptor(auth_token)], options=limits.grpc_options())
    for service, servicer in servicers.items():
        _ADD_SERVICER[service](servicer, server)
    names = [speculate_pb2.DESCRIPTOR.services_by_name[service].full_name for service in servicers]
    status = _health(server, names, aio=False)
    for name in names:
        status.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.specgrove_health = (status, *names)
    return server, add_port(server, addr, tls)


def create_verifier_server(addr: str, worker, auth_token: str | None = None, link_delay_ms: float = 0.0,
                           threads: int = 8, tls: TlsConfig | None = None, limits: Limits = DEFAULT_LIMITS):
    from services.workers import VerifierServicer

    return _worker_server(addr, {"Verifier": VerifierServicer(worker)}, LinkDelay(link_delay_ms), auth_token,
                          threads, tls, limits)


def create_drafter_server(addr: str, worker, model=None, auth_token: str | None = None, threads: int = 8,
                          tls: TlsConfig | None = None, verifiers: tuple[str, ...] = (),
                          limits: Limits = DEFAULT_LIMITS, link_delay_ms: float = 0.0):
    """verifiers: the only addresses its Draft calls may stream to (empty: any). link_delay_ms:
    the orchestrator→drafter link's one-way latency, emulated (see LinkDelay)."""
    from services.workers import DrafterServicer, VerifierStubs

    stubs = VerifierStubs(tls, auth_token, verifiers, limits=limits)
    return _worker_server(addr, {"Drafter": DrafterServicer(worker, stubs, model)},
                          LinkDelay(link_delay_ms, ("/Draft",)), auth_token, threads, tls, limits)


def create_worker_server(addr: str, verifier, drafter, model=None, auth_token: str | None = None, threads: int = 16,
                         tls: TlsConfig | None = None, limits: Limits = DEFAULT_LIMITS, link_delay_ms: float = 0.0):
    """A drafter and a verifier in one process (``serve worker``): both services on one port; the
    drafter verifies on its own verifier by a direct call (``VerifierStubs``'s local), and on
    any other verifier a Draft request names over gRPC. link_delay_ms: the orchestrator→drafter
    link's one-way latency, emulated (see LinkDelay)."""
    from services.workers import DrafterServicer, VerifierServicer, VerifierStubs, new_instance

    instance = new_instance()
    stubs = VerifierStubs(tls, auth_token, limits=limits, local=(instance, verifier))
    servicers = {"Verifier": VerifierServicer(verifier, instance), "Drafter": DrafterServicer(drafter, stubs, model,
                                                                                            instance)}
    return _worker_server(addr, servicers, LinkDelay(link_delay_ms, ("/Draft",)), auth_token, threads, tls, limits)


class ProcessWorkers:
    """The drafter and the verifier of one process, drained together (``drain``)."""

    def __init__(self, *workers):
        self.workers = workers

    @property
    def draining(self) -> bool:
        return any(worker.draining for worker in self.workers)

    @draining.setter
    def draining(self, value: bool) -> None:
        for worker in self.workers:
            worker.draining = value

    def busy(self) -> bool:
        return any(worker.busy() for worker in self.workers)


def drain(server, worker, drain_s: float, grace_s: float = 2.0) -> None:
    """Stop a worker without losing a round: report NOT_SERVING (a Kubernetes readiness probe
    takes the pod out of its Service) and ``draining`` in the load orchestrators poll, so they
    place no new sessions here and move theirs at their next round; wait (up to ``drain_s``) until
    no session is left (``worker.busy()``); then stop, letting calls in flight end."""
    worker.draining = True
    status, *names = server.specgrove_health
    for service in ("", *names):
        status.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    deadline = time.monotonic() + drain_s
    while worker.busy() and time.monotonic() < deadline:
        time.sleep(0.1)
    server.stop(grace=grace_s).wait()


async def create_orchestrator_server(addr: str, pipeline, draft_name: str = "", auth_token: str | None = None,
                                     tls: TlsConfig | None = None, limits: Limits = DEFAULT_LIMITS):
    """An asyncio server; the caller awaits ``server.start()``."""
    from services.orchestrator import OrchestratorServicer

    server = grpc.aio.server(interceptors=[AioServerInterceptor(auth_token, limits.max_streams_per_client)],
                             options=limits.grpc_options())
    generate_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(pipeline, draft_name, limits), server)
    name = generate_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name
    status = _health(server, [name], aio=True)
    await status.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, add_port(server, addr, tls)
