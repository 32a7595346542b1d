"""Server interceptors, one wrapper per handler: a server span (parent from the caller's gRPC
metadata), the bearer-token check, and the one table mapping exceptions to gRPC status codes.
A sync version for the drafter and verifier, an asyncio version for the orchestrator."""

from __future__ import annotations

import asyncio
import logging

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from specgrove import telemetry
from specgrove.errors import SpecGroveError

log = logging.getLogger(__name__)

UNCHECKED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")  # probes need no token


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an exception: domain errors carry their code; the rest is mapped here."""
    if isinstance(exc, SpecGroveError):
        return getattr(grpc.StatusCode, exc.code), str(exc)
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):  # a downstream worker's status
        return exc.code(), f"downstream: {exc.details()}"
    try:
        import redis.exceptions

        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return grpc.StatusCode.UNAVAILABLE, f"session store (Redis) unreachable: {exc}"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "timed out"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _authorised(metadata, token: str | None, method: str) -> bool:
    if not token or method.startswith(UNCHECKED_PREFIXES):
        return True
    return dict(metadata or ()).get("authorization") == f"Bearer {token}"


def server_span(role: str, method: str, metadata):
    """The server span of a call, child of the caller's span (trace context from the metadata)."""
    return telemetry.tracer().start_as_current_span(
        f"{role} {method.rsplit('/', 1)[-1]}", kind=SpanKind.SERVER, context=telemetry.extract_context(metadata),
        attributes={"rpc.system": "grpc", "rpc.method": method},
    )


class ServerInterceptor(grpc.ServerInterceptor):
    """Sync servers (drafter, verifier)."""

    def __init__(self, role: str, auth_token: str | None = None):
        self.role = role
        self.auth_token = auth_token

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(UNCHECKED_PREFIXES):
            return handler
        method = details.method

        def guard(context):
            if not _authorised(context.invocation_metadata(), self.auth_token, method):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        def span(context):
            return server_span(self.role, method, context.invocation_metadata())

        def fail(context, current, exc):
            code, message = status_of(exc)
            current.set_status(Status(StatusCode.ERROR, message))
            log.info("%s -> %s: %s", method, code.name, message)
            context.abort(code, message)

        def unary(behavior):
            def wrapped(request, context):
                guard(context)
                with span(context) as current:
                    try:
                        return behavior(request, context)
                    except Exception as exc:  # noqa: BLE001 - mapped to a status
                        if context.code() is not None:
                            raise
                        fail(context, current, exc)
            return wrapped

        def streaming(behavior):
            def wrapped(request, context):
                guard(context)
                with span(context) as current:
                    try:
                        yield from behavior(request, context)
                    except Exception as exc:  # noqa: BLE001
                        if context.code() is not None:
                            raise
                        fail(context, current, exc)
            return wrapped

        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kw)
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kw)


class AioServerInterceptor(grpc.aio.ServerInterceptor):
    """The asyncio server (orchestrator)."""

    def __init__(self, role: str, auth_token: str | None = None):
        self.role = role
        self.auth_token = auth_token

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(UNCHECKED_PREFIXES):
            return handler
        method = details.method

        async def guard(context):
            if not _authorised(context.invocation_metadata(), self.auth_token, method):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        def span(context):
            return server_span(self.role, method, context.invocation_metadata())

        async def fail(context, current, exc):
            code, message = status_of(exc)
            current.set_status(Status(StatusCode.ERROR, message))
            log.info("%s -> %s: %s", method, code.name, message)
            await context.abort(code, message)

        def unary(behavior):
            async def wrapped(request, context):
                await guard(context)
                with span(context) as current:
                    try:
                        return await behavior(request, context)
                    except (grpc.aio.AbortError, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # noqa: BLE001
                        await fail(context, current, exc)
            return wrapped

        def streaming(behavior):
            async def wrapped(request, context):
                await guard(context)
                with span(context) as current:
                    try:
                        async for item in behavior(request, context):
                            yield item
                    except (grpc.aio.AbortError, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # noqa: BLE001
                        await fail(context, current, exc)
            return wrapped

        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kw)
        raise NotImplementedError(f"{method}: streaming requests are not used by the orchestrator")
