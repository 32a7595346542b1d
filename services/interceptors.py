"""Server interceptors, one wrapper per handler: a server span (parent from the caller's gRPC
metadata), the bearer-token check, and the one table mapping exceptions to gRPC status codes.
A sync version for the drafter and verifier, an asyncio version for the orchestrator."""

from __future__ import annotations

import asyncio
import logging

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from specgrove import telemetry
from specgrove.errors import InvalidArgument, SpecGroveError

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


def decoding(handler, behavior, stream_request: bool):
    """``behavior`` taking raw bytes: the interceptor parses the request itself, so a malformed
    message (bad wire format, invalid UTF-8 in a string field) is INVALID_ARGUMENT through the
    one status table, not gRPC's own INTERNAL."""
    deserializer = handler.request_deserializer

    def decode(data: bytes):
        try:
            return deserializer(data) if deserializer else data
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise InvalidArgument("request", f"malformed message: {type(exc).__name__}: {exc}") from exc

    if stream_request:
        return lambda requests, context: behavior((decode(m) for m in requests), context)
    return lambda request, context: behavior(decode(request), context)


def _authorised(metadata, token: str | None, method: str) -> bool:
    if not token or method.startswith(UNCHECKED_PREFIXES):
        return True
    return dict(metadata or ()).get("authorization") == f"Bearer {token}"


def service_role(method: str) -> str:
    """'/specgrove.v1.Drafter/Draft' -> 'drafter': the role a method belongs to, which names its
    span (a worker's server holds two roles)."""
    return method.lstrip("/").split("/", 1)[0].rsplit(".", 1)[-1].lower()


def server_span(method: str, metadata):
    """The server span of a call, "<role> <method>", child of the caller's span (trace context
    from the metadata)."""
    return telemetry.tracer().start_as_current_span(
        f"{service_role(method)} {method.rsplit('/', 1)[-1]}", kind=SpanKind.SERVER,
        context=telemetry.extract_context(metadata),
        attributes={"rpc.system": "grpc", "rpc.method": method},
    )


def _record_failure(method: str, current, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a handler's exception becomes (``status_of``), marked on its span and logged."""
    code, message = status_of(exc)
    current.set_status(Status(StatusCode.ERROR, message))
    log.info("%s -> %s: %s", method, code.name, message)
    return code, message


# A handler's kinds: (its attribute, whether requests stream, whether responses do, its factory)
_HANDLER_KINDS = (
    ("unary_unary", False, False, grpc.unary_unary_rpc_method_handler),
    ("stream_unary", True, False, grpc.stream_unary_rpc_method_handler),
    ("unary_stream", False, True, grpc.unary_stream_rpc_method_handler),
    ("stream_stream", True, True, grpc.stream_stream_rpc_method_handler),
)


class _Wrapping:
    """What both interceptors share: a handler rebuilt around its behaviour wrapped by the
    subclass's ``_unary`` or ``_streaming`` (sync or async), and the server span."""

    streaming_requests = True  # the asyncio server (the orchestrator) serves none

    def _wrapped(self, handler, method: str):
        kind, streams_in, streams_out, make = next((k for k in _HANDLER_KINDS if getattr(handler, k[0])),
                                                   _HANDLER_KINDS[-1])
        if streams_in and not self.streaming_requests:
            raise NotImplementedError(f"{method}: streaming requests are not used by the orchestrator")
        wrap = self._streaming if streams_out else self._unary
        return make(wrap(method, decoding(handler, getattr(handler, kind), streams_in)),
                    request_deserializer=None, response_serializer=handler.response_serializer)

    def _span(self, method: str, context):
        return server_span(method, context.invocation_metadata())


class ServerInterceptor(_Wrapping, grpc.ServerInterceptor):
    """Sync servers (drafter, verifier, or a worker holding both)."""

    def __init__(self, auth_token: str | None = None):
        self.auth_token = auth_token

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(UNCHECKED_PREFIXES):
            return handler
        return self._wrapped(handler, details.method)

    def _guard(self, method: str, context) -> None:
        """Abort with UNAUTHENTICATED unless the call carries the bearer token."""
        if not _authorised(context.invocation_metadata(), self.auth_token, method):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    def _unary(self, method: str, behavior):
        """``behavior`` (one response) guarded, in its span, its exceptions mapped to a status."""
        def wrapped(request, context):
            self._guard(method, context)
            with self._span(method, context) as current:
                try:
                    return behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    if context.code() is not None:
                        raise
                    context.abort(*_record_failure(method, current, exc))
        return wrapped

    def _streaming(self, method: str, behavior):
        """``behavior`` (a response stream) guarded, in its span, its exceptions mapped to a status."""
        def wrapped(request, context):
            self._guard(method, context)
            with self._span(method, context) as current:
                try:
                    yield from behavior(request, context)
                except Exception as exc:  # noqa: BLE001
                    if context.code() is not None:
                        raise
                    context.abort(*_record_failure(method, current, exc))
        return wrapped


def client_key(metadata, peer: str) -> str:
    """Who a call is from, for per-client limits: its bearer token when it sends one, else its
    peer address without the port (connections from one host count together)."""
    auth = dict(metadata or ()).get("authorization")
    if auth:
        return f"token:{auth}"
    host = peer.rsplit(":", 1)[0] if peer.count(":") and not peer.startswith("unix") else peer
    return f"peer:{host}"


class AioServerInterceptor(_Wrapping, grpc.aio.ServerInterceptor):
    """The asyncio server (orchestrator). max_streams: concurrent server-streaming calls
    (Generate) per client (``client_key``); more get RESOURCE_EXHAUSTED before any work."""

    streaming_requests = False

    def __init__(self, auth_token: str | None = None, max_streams: int | None = None):
        self.auth_token = auth_token
        self.max_streams = max_streams
        self._streams: dict[str, int] = {}  # client -> open streams (one event loop: no lock)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(UNCHECKED_PREFIXES):
            return handler
        return self._wrapped(handler, details.method)

    async def _guard(self, method: str, context) -> None:
        """Abort with UNAUTHENTICATED unless the call carries the bearer token."""
        if not _authorised(context.invocation_metadata(), self.auth_token, method):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    async def _open_stream(self, context) -> str:
        """Count one more stream open from the call's client (returned), or abort with
        RESOURCE_EXHAUSTED when that client already has max_streams open."""
        client = client_key(context.invocation_metadata(), context.peer())
        open_now = self._streams.get(client, 0)
        if self.max_streams is not None and open_now >= self.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"max_streams_per_client: {open_now} streams open from this client "
                                f"(limit {self.max_streams}); retry later")
        self._streams[client] = open_now + 1
        return client

    def _close_stream(self, client: str) -> None:
        left = self._streams[client] - 1
        if left:
            self._streams[client] = left
        else:
            del self._streams[client]

    def _unary(self, method: str, behavior):
        """``behavior`` (one response) guarded, in its span, its exceptions mapped to a status."""
        async def wrapped(request, context):
            await self._guard(method, context)
            with self._span(method, context) as current:
                try:
                    return await behavior(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    await context.abort(*_record_failure(method, current, exc))
        return wrapped

    def _streaming(self, method: str, behavior):
        """``behavior`` (a response stream) guarded, counted against its client's max_streams,
        in its span, its exceptions mapped to a status."""
        async def wrapped(request, context):
            await self._guard(method, context)
            client = await self._open_stream(context)
            try:
                with self._span(method, context) as current:
                    try:
                        async for item in behavior(request, context):
                            yield item
                    except (grpc.aio.AbortError, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # noqa: BLE001
                        await context.abort(*_record_failure(method, current, exc))
            finally:
                self._close_stream(client)
        return wrapped
