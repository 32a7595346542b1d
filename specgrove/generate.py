"""The Generate API in domain terms, the twins of generate.proto's messages: a call
(``GenerateCall``) and the events a generation streams back (``ChunkEvent``s, then one
``CompletionEvent``). specgrove.codec converts them to and from protobuf; the orchestrator's
pipeline consumes the call and yields the events."""

from __future__ import annotations

from dataclasses import dataclass

from specgrove.sampling import SamplingParams


@dataclass(frozen=True)
class GenerateCall:
    """A Generate request in domain terms."""

    prompt_text: str | None
    prompt_ids: list[int] | None
    chat: bool
    params: SamplingParams
    speculation: dict  # mode, draft_len, tree_budget, tree_depth (absent = server default)
    session_id: str = ""
    resume_from: int = 0


@dataclass
class ChunkEvent:
    session_id: str
    index: int
    token_ids: list[int]
    text: str
    step: int = 0
    num_drafted: int = 0
    num_accepted: int = 0
    tree_size: int = 0
    tree_depth: int = 0


@dataclass
class CompletionEvent:
    session_id: str
    finish_reason: str
    text: str
    seed: int
    prompt_tokens: int
    completion_tokens: int
    rounds: int
    num_draft_tokens: int
    num_accepted_tokens: int
    error: str = ""
