"""The orchestrator's HTTP API (aiohttp, same event loop as its gRPC server): OpenAI-compatible
``/v1/completions``, ``/v1/chat/completions`` (JSON or server-sent events), ``/v1/models``,
``/health`` and Prometheus ``/metrics``.

It lives in the orchestrator process rather than in a role of its own: it drives the same
``Pipeline`` as the gRPC servicer (one validation, one session loop, one Redis store, one set of
metrics) with no extra network hop. Handlers are thin: parse (services.openai_protocol), open the
session, map events out.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from orchestrator.pipeline import Pipeline
from services import openai_protocol as oai
from specgrove.errors import InvalidArgument, SpecGroveError
from specgrove.generate import CompletionEvent
from specgrove.metrics import CONTENT_TYPE, exposition

log = logging.getLogger(__name__)
SESSION_HEADER = "X-SpecGrove-Session-Id"  # the session behind a completion (gRPC resumes it by id)
PIPELINE = web.AppKey("pipeline", Pipeline)
SERVED = web.AppKey("served", tuple)
TOKEN = web.AppKey("token", str)


def create_app(pipeline: Pipeline, served_names: tuple[str, ...], auth_token: str | None = None) -> web.Application:
    """served_names: the model ids requests may name (the first is the one /v1/models lists)."""
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=4 * 1024 * 1024)
    app[PIPELINE], app[SERVED], app[TOKEN] = pipeline, served_names, auth_token or ""
    app.add_routes([
        web.post("/v1/completions", completions), web.post("/v1/chat/completions", chat_completions),
        web.get("/v1/models", models), web.get("/health", health), web.get("/metrics", metrics),
    ])
    return app


async def start_http(pipeline: Pipeline, host: str, port: int, served_names: tuple[str, ...],
                     auth_token: str | None = None, ssl_context=None) -> tuple[web.AppRunner, int]:
    """Serve on host:port (0 = any free port), HTTPS with ``ssl_context`` (``specgrove.tls.ssl_context``);
    returns (runner to clean up, bound port)."""
    runner = web.AppRunner(create_app(pipeline, served_names, auth_token), handler_cancellation=True,
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


@web.middleware
async def _errors_and_auth(request: web.Request, handler):
    token = request.app[TOKEN]
    if token and request.path.startswith("/v1/") and request.headers.get("Authorization") != f"Bearer {token}":
        return web.json_response({"error": {"message": "missing or wrong bearer token", "type": "invalid_request_error",
                                            "param": None, "code": "invalid_api_key"}}, status=401)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": {"message": exc.reason, "type": "invalid_request_error", "param": None,
                                            "code": str(exc.status)}}, status=exc.status)
    except SpecGroveError as exc:
        status, body = oai.error_body(exc)
        return web.json_response(body, status=status)
    except Exception as exc:  # noqa: BLE001 - answer in OpenAI's shape, log the details
        log.exception("HTTP %s failed", request.path)
        status, body = oai.error_body(exc)
        return web.json_response(body, status=status)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    pipeline = request.app[PIPELINE]
    try:
        body = await request.json()
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError on a body that is not UTF-8
        raise InvalidArgument("body", f"not valid UTF-8 JSON: {exc}") from exc
    parsed = oai.parse(body, chat, pipeline.text, request.app[SERVED])
    run = await pipeline.open(parsed.call)  # every request error is raised here, before any work
    events = pipeline.run(run, lambda: None)
    responder = oai.Responder(parsed)
    session = {SESSION_HEADER: run.session.id}  # a SpecGrove-aware client can resume it over gRPC
    if parsed.stream:
        return await _stream(request, events, responder, session)
    try:
        done = [event async for event in events if isinstance(event, CompletionEvent)][-1]
    finally:
        await events.aclose()
    if done.finish_reason == "error":
        raise SpecGroveError(done.error)
    return web.json_response(responder.complete(done), headers=session)


async def _stream(request: web.Request, events, responder: oai.Responder, headers: dict) -> web.StreamResponse:
    """Server-sent events; the headers go out with the first round, so an error before it (every
    verifier down) is still a plain HTTP error; one after it becomes an error event."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers})
    first = True
    try:
        async for event in events:
            if not response.prepared:
                await response.prepare(request)
            if isinstance(event, CompletionEvent):
                await _write_end(response, responder, event, first)
            elif event.text or first:
                await response.write(oai.sse(responder.chunk(event.text, first=first)))
                first = False
    except SpecGroveError as exc:  # the session stays resumable by its id
        if not response.prepared:
            raise
        await response.write(oai.sse(oai.error_body(exc)[1]))
    finally:
        await events.aclose()  # a client that went away releases the session here
    await response.write(oai.sse("[DONE]"))
    await response.write_eof()
    return response


async def _write_end(response: web.StreamResponse, responder: oai.Responder, done: CompletionEvent,
                     first: bool) -> None:
    if done.finish_reason == "error":
        await response.write(oai.sse(oai.error_body(SpecGroveError(done.error))[1]))
        return
    await response.write(oai.sse(responder.chunk("", oai.finish_of(done), first=first)))
    if responder.request.include_usage:
        await response.write(oai.sse(responder.usage_chunk(done)))


async def models(request: web.Request) -> web.Response:
    name = request.app[SERVED][0]
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": int(time.time()), "owned_by": "specgrove"}]})


async def health(request: web.Request) -> web.Response:
    try:
        await request.app[PIPELINE].store.ping()
    except Exception as exc:  # noqa: BLE001 - Redis down: not ready
        return web.json_response({"status": "unavailable", "reason": f"redis: {exc}"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=exposition(request.app[PIPELINE].metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE})
