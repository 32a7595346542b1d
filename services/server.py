"""Servers of the three roles: ``create_*_server(addr, ...) -> (server, port)`` (tests bind port 0),
each with the error/tracing/auth interceptor, ``grpc.health.v1`` and server reflection."""

from __future__ import annotations

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
    """Delays every Verify call by a set time: an injected slow drafter→verifier link (tests,
    benchmarks). Only Verify: a plain decoding step goes orchestrator→verifier directly. The
    sleep happens in the call's own handler thread, so other calls are not held up."""

    def __init__(self, delay_ms: float):
        self.delay_s = delay_ms / 1000

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if self.delay_s <= 0 or handler is None or not details.method.endswith("/Verify"):
            return handler
        behavior, delay = handler.stream_unary, self.delay_s

        def delayed(request_iterator, context):
            time.sleep(delay)
            return behavior(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(delayed, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)


def _health(server, names: list[str], aio: bool):
    servicer = health.aio.HealthServicer() if aio else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return servicer


def create_verifier_server(addr: str, worker, auth_token: str | None = None, link_delay_ms: float = 0.0,
                           threads: int = 8, tls: TlsConfig | None = None, limits: Limits = DEFAULT_LIMITS):
    from services.workers import VerifierServicer

    interceptors = [LinkDelay(link_delay_ms), ServerInterceptor("verifier", auth_token)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), interceptors=interceptors,
                         options=limits.grpc_options())
    speculate_pb2_grpc.add_VerifierServicer_to_server(VerifierServicer(worker), server)
    name = speculate_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name
    status = _health(server, [name], aio=False)
    status.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, add_port(server, addr, tls)


def create_drafter_server(addr: str, worker, model=None, auth_token: str | None = None, threads: int = 8,
                          tls: TlsConfig | None = None, verifiers: tuple[str, ...] = (),
                          limits: Limits = DEFAULT_LIMITS):
    """verifiers: the only addresses its Draft calls may stream to (empty: any)."""
    from services.workers import DrafterServicer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         interceptors=[ServerInterceptor("drafter", auth_token)],
                         options=limits.grpc_options())
    speculate_pb2_grpc.add_DrafterServicer_to_server(DrafterServicer(worker, model, auth_token=auth_token, tls=tls,
                                                                     verifiers=verifiers, limits=limits), server)
    name = speculate_pb2.DESCRIPTOR.services_by_name["Drafter"].full_name
    status = _health(server, [name], aio=False)
    status.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, add_port(server, addr, tls)


async def create_orchestrator_server(addr: str, pipeline, draft_name: str = "", auth_token: str | None = None,
                                     tls: TlsConfig | None = None, limits: Limits = DEFAULT_LIMITS):
    """An asyncio server; the caller awaits ``server.start()``."""
    from services.orchestrator import OrchestratorServicer

    server = grpc.aio.server(interceptors=[AioServerInterceptor("orchestrator", auth_token,
                                                                limits.max_streams_per_client)],
                             options=limits.grpc_options())
    generate_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(pipeline, draft_name, limits), server)
    name = generate_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name
    status = _health(server, [name], aio=True)
    await status.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, add_port(server, addr, tls)
