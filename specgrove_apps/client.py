"""A small Python client for the orchestrator: stream chunks, or collect a whole completion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from specgrove import codec
from specgrove.tls import TlsConfig, open_channel
from specgrove.v1 import generate_pb2, generate_pb2_grpc


@dataclass
class Completion:
    session_id: str
    token_ids: list[int]
    text: str
    finish_reason: str
    seed: int
    usage: dict
    chunks: list = field(default_factory=list)  # the streamed Chunk messages


class Client:
    def __init__(self, address: str, auth_token: str | None = None, tls: TlsConfig | None = None):
        """tls: ``TlsConfig(ca=...)`` for TLS, plus ``cert``/``key`` when the server requires a client
        certificate (mTLS); None: plaintext."""
        self.channel = open_channel(address, tls)
        self.stub = generate_pb2_grpc.OrchestratorStub(self.channel)
        self.metadata = [("authorization", f"Bearer {auth_token}")] if auth_token else []

    def stream(self, prompt: str | None = None, *, token_ids: list[int] | None = None, chat: bool = False,
               session_id: str = "", resume_from: int = 0, timeout: float | None = None,
               mode: str | None = None, draft_len: int | None = None, tree_budget: int | None = None,
               tree_depth: int | None = None, **sampling) -> Iterator[generate_pb2.GenerateResponse]:
        """Sampling keywords: temperature, top_k, top_p, seed, max_new_tokens, stop, stop_token_ids,
        grammar (a ``specgrove.grammar.GrammarSpec``: structured output)."""
        request = generate_pb2.GenerateRequest(chat=chat, session_id=session_id, resume_from=resume_from)
        if prompt is not None:
            request.text = prompt
        if token_ids is not None:
            request.token_ids.ids.extend(token_ids)
        for name, value in sampling.items():
            if value is None:
                continue
            if name in ("stop", "stop_token_ids"):
                getattr(request.sampling, name).extend(value)
            elif name == "grammar":
                request.sampling.grammar.kind, request.sampling.grammar.source = value.kind, value.source
            else:
                setattr(request.sampling, name, value)
        for name, value in (("mode", mode), ("draft_len", draft_len), ("tree_budget", tree_budget),
                            ("tree_depth", tree_depth)):
            if value is not None:
                setattr(request.speculation, name, value)
        return self.stub.Generate(request, timeout=timeout, metadata=self.metadata)

    @staticmethod
    def session_id(stream) -> str:
        """The session id a ``stream`` announced in its initial metadata (waiting for it), or ""
        when the call failed before the session existed: then nothing was stored, and the request
        can be sent again whole."""
        return dict(stream.initial_metadata() or ()).get(codec.SESSION_ID_METADATA, "")

    def generate(self, prompt: str | None = None, **kwargs) -> Completion:
        chunks, tokens = [], []
        for response in self.stream(prompt, **kwargs):
            if response.HasField("chunk"):
                chunks.append(response.chunk)
                tokens.extend(response.chunk.token_ids)
            else:
                c = response.completion
                return Completion(c.session_id, tokens, c.text, codec.FINISH_NAMES.get(c.finish_reason, "error"),
                                  c.seed, {"prompt_tokens": c.usage.prompt_tokens,
                                           "completion_tokens": c.usage.completion_tokens, "rounds": c.usage.rounds,
                                           "num_draft_tokens": c.usage.num_draft_tokens,
                                           "num_accepted_tokens": c.usage.num_accepted_tokens}, chunks)
        raise RuntimeError("the stream ended without a completion")

    def abort(self, session_id: str) -> bool:
        return self.stub.Abort(generate_pb2.AbortRequest(session_id=session_id), metadata=self.metadata).was_running

    def info(self) -> generate_pb2.ModelInfo:
        return self.stub.GetModelInfo(generate_pb2.GetModelInfoRequest(), metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
