"""OpenAI's completions and chat-completions API in SpecGrove's terms, free of HTTP: a request
body -> ``GenerateCall`` (validated, errors naming the parameter), pipeline events -> response
objects and stream chunks, domain errors -> OpenAI's error object and HTTP status.

Follows https://platform.openai.com/docs/api-reference: defaults are OpenAI's (temperature 1,
completions ``max_tokens`` 16), unknown parameters are refused, and parameters SpecGrove cannot
honour (``n`` > 1, ``logprobs``, penalties, ``logit_bias``, tools) fail with 400 rather than being
ignored. Extensions, as vLLM accepts them: ``top_k``, ``stop_token_ids``, ``seed`` for chat,
``speculation`` ({mode, draft_len, tree_budget, tree_depth}) and ``structured_outputs``
({"regex": ...} or {"json": schema}); ``response_format`` works on both endpoints.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from specgrove.errors import InvalidArgument, NotFound, SpecGroveError
from specgrove.generate import ChunkEvent, CompletionEvent, GenerateCall
from specgrove.grammar import GrammarSpec
from specgrove.models import TextCodec
from specgrove.sampling import SamplingParams

SHARED = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
          "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user", "top_k", "stop_token_ids",
          "speculation", "response_format", "structured_outputs"}
COMPLETION_KEYS = SHARED | {"prompt", "echo", "suffix", "best_of"}
CHAT_KEYS = SHARED | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                      "parallel_tool_calls", "metadata", "store"}
ROLES = ("system", "user", "assistant", "developer")
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "abort", "time_limit": "length"}
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
               "ABORTED": 409, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
               "UNAUTHENTICATED": 401, "INTERNAL": 500}
DEFAULT_CHAT_MAX_TOKENS = 128  # the gRPC API's default; OpenAI's "up to the context" is minutes on a CPU


@dataclass(frozen=True)
class OpenAIRequest:
    """A parsed request: what to generate and how to answer."""

    call: GenerateCall
    chat: bool
    stream: bool
    include_usage: bool
    model: str


def error_body(exc: Exception) -> tuple[int, dict]:
    """(HTTP status, OpenAI error object) for a domain error; anything else is a 500."""
    code = getattr(exc, "code", "INTERNAL") if isinstance(exc, SpecGroveError) else "INTERNAL"
    status = HTTP_STATUS.get(code, 500)
    kind = "invalid_request_error" if status < 500 else "server_error"
    message = str(exc) if isinstance(exc, SpecGroveError) else f"internal error: {type(exc).__name__}"
    error = {"message": message, "type": kind, "param": getattr(exc, "field", None), "code": code.lower()}
    if isinstance(exc, ModelNotFound):
        error["code"] = "model_not_found"
    return status, {"error": error}


class ModelNotFound(NotFound):
    def __init__(self, name: str, served: str):
        super().__init__(f"the model {name!r} does not exist; this server serves {served!r}")
        self.field = "model"


def parse(body: object, chat: bool, text: TextCodec, served: tuple[str, ...]) -> OpenAIRequest:
    """Validate an OpenAI request body; raise InvalidArgument / OutOfRange naming the parameter."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    unknown = sorted(set(body) - (CHAT_KEYS if chat else COMPLETION_KEYS))
    if unknown:
        raise InvalidArgument(unknown[0], "unrecognized request argument")
    model = _get(body, "model", str, None)
    if model is None:
        raise InvalidArgument("model", "is required")
    if model not in served:
        raise ModelNotFound(model, served[0])
    _unsupported(body)
    params = _sampling(body, chat)
    spec = _speculation(body.get("speculation"))
    if chat:
        prompt_ids, prompt_text = text.chat_messages(_messages(body.get("messages"))), None
    else:
        prompt_ids, prompt_text = _prompt(body.get("prompt"))
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, None) or {}
    if options and not stream:
        raise InvalidArgument("stream_options", "only allowed when stream is true")
    call = GenerateCall(prompt_text, prompt_ids, False, params, spec)
    return OpenAIRequest(call, chat, stream, bool(options.get("include_usage", False)), model)


def _get(body: dict, name: str, kind, default):
    value = body.get(name)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(name, f"must be {kind.__name__}, got {type(value).__name__}")
    return value


def _unsupported(body: dict) -> None:
    if _get(body, "n", int, 1) != 1 or _get(body, "best_of", int, 1) != 1:
        raise InvalidArgument("n", "only n = 1 is supported (send several requests; the server batches sessions)")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise InvalidArgument("logprobs", "log-probabilities are not supported")
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, float, 0.0) != 0.0:
            raise InvalidArgument(name, "penalties are not supported: they would change the target's distribution")
    if body.get("logit_bias"):
        raise InvalidArgument("logit_bias", "is not supported")
    if body.get("echo") or body.get("suffix"):
        raise InvalidArgument("echo" if body.get("echo") else "suffix", "is not supported")
    if body.get("tools") or body.get("tool_choice") not in (None, "none"):
        raise InvalidArgument("tools", "tool calls are not supported")


def _sampling(body: dict, chat: bool) -> SamplingParams:
    default_max = DEFAULT_CHAT_MAX_TOKENS if chat else 16
    max_tokens = _get(body, "max_completion_tokens", int, None) if chat else None
    max_tokens = max_tokens if max_tokens is not None else _get(body, "max_tokens", int, default_max)
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else ()
    if stop is not None and not isinstance(stop, (str, list)):
        raise InvalidArgument("stop", "must be a string or a list of strings")
    ids = body.get("stop_token_ids") or []
    if not isinstance(ids, list):
        raise InvalidArgument("stop_token_ids", "must be a list of token ids")
    top_k = _get(body, "top_k", int, 0)
    return SamplingParams(
        temperature=_get(body, "temperature", float, 1.0), top_k=0 if top_k == -1 else top_k,  # -1: vLLM's "off"
        top_p=_get(body, "top_p", float, 1.0), seed=_get(body, "seed", int, None), max_new_tokens=max_tokens,
        stop_token_ids=tuple(ids), stop=stops, grammar=_grammar(body),
    )


def _grammar(body: dict) -> GrammarSpec | None:
    fmt, structured = body.get("response_format"), body.get("structured_outputs")
    if fmt is not None and structured is not None:
        raise InvalidArgument("response_format", "send response_format or structured_outputs, not both")
    if structured is not None:
        if not isinstance(structured, dict) or len(structured) != 1 or next(iter(structured)) not in ("regex", "json"):
            raise InvalidArgument("structured_outputs", 'must be {"regex": pattern} or {"json": schema}')
        (kind, value), = structured.items()
        return GrammarSpec.regex(value) if kind == "regex" else GrammarSpec.json_schema(value)
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec.json_object()
    if kind == "json_schema":
        inner = fmt.get("json_schema")
        if not isinstance(inner, dict) or "schema" not in inner:
            raise InvalidArgument("response_format.json_schema", 'must be {"name": ..., "schema": {...}}')
        return GrammarSpec.json_schema(inner["schema"])
    raise InvalidArgument("response_format.type", f"must be text, json_object or json_schema, got {kind!r}")


def _speculation(raw: object) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("speculation", "must be an object")
    spec = {}
    for name, kind in (("mode", str), ("draft_len", int), ("tree_budget", int), ("tree_depth", int)):
        value = _get(raw, name, kind, None)
        if value is not None:
            spec[name] = value
    extra = sorted(set(raw) - {"mode", "draft_len", "tree_budget", "tree_depth"})
    if extra:
        raise InvalidArgument(f"speculation.{extra[0]}", "unrecognized speculation option")
    return spec


def _prompt(prompt: object) -> tuple[list[int] | None, str | None]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidArgument("prompt", "must not be empty")
        return None, prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt), None
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise InvalidArgument("prompt", "one prompt per request (send several requests; they run concurrently)")
    raise InvalidArgument("prompt", "must be a non-empty string or a list of token ids")


def _messages(messages: object) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages", "must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidArgument(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise InvalidArgument(f"messages[{i}].content", "only text content parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidArgument(f"messages[{i}].content", "must be a string or a list of text parts")
        out.append({"role": "system" if message["role"] == "developer" else message["role"], "content": content})
    return out


# ---------------------------------------------------------------------- responses

class Responder:
    """Builds the response objects of one request (ids, timestamps and the model name fixed)."""

    def __init__(self, request: OpenAIRequest):
        self.request = request
        self.id = ("chatcmpl-" if request.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if request.chat else "text_completion"

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.request.model}

    def chunk(self, text: str, finish: str | None = None, first: bool = False) -> dict:
        """One streamed chunk: a text delta (and the finish reason on the last one)."""
        if self.request.chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._base("text_completion"), "choices": [choice]}

    def usage_chunk(self, done: CompletionEvent) -> dict:
        obj = "chat.completion.chunk" if self.request.chat else "text_completion"
        return {**self._base(obj), "choices": [], "usage": usage(done)}

    def complete(self, done: CompletionEvent) -> dict:
        finish = FINISH.get(done.finish_reason, "stop")
        if self.request.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": done.text, "logprobs": None, "finish_reason": finish}
        return {**self._base(self.object), "choices": [choice], "usage": usage(done), "speculation": speculation(done)}


def usage(done: CompletionEvent) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def speculation(done: CompletionEvent) -> dict:
    """The extension block: how speculation went (vLLM's acceptance length: tokens per round)."""
    return {"session_id": done.session_id, "seed": done.seed, "rounds": done.rounds,
            "num_draft_tokens": done.num_draft_tokens, "num_accepted_tokens": done.num_accepted_tokens,
            "tokens_per_round": round(done.completion_tokens / done.rounds, 4) if done.rounds else 0.0}


def finish_of(event: CompletionEvent) -> str:
    return FINISH.get(event.finish_reason, "stop")


def sse(obj: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def is_chunk(event) -> bool:
    return isinstance(event, ChunkEvent)
