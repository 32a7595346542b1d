"""Protobuf <-> domain conversion, in one place: sampling parameters, packed token ids, token-tree
levels, verify results and draft budgets. No math, no I/O."""

from __future__ import annotations

import numpy as np
import torch

from specgrove.budget import DraftBudget
from specgrove.generate import ChunkEvent, CompletionEvent, GenerateCall
from specgrove.grammar import GrammarSpec
from specgrove.sampling import SamplingParams
from specgrove.tree import VerifyResult
from specgrove.v1 import generate_pb2, speculate_pb2

DEFAULT_MAX_NEW_TOKENS = 128

FINISH_REASONS = {
    "length": generate_pb2.FINISH_REASON_LENGTH,
    "eos": generate_pb2.FINISH_REASON_EOS,
    "stop": generate_pb2.FINISH_REASON_STOP,
    "cancelled": generate_pb2.FINISH_REASON_CANCELLED,
    "time_limit": generate_pb2.FINISH_REASON_TIME_LIMIT,
    "error": generate_pb2.FINISH_REASON_ERROR,
}
FINISH_NAMES = {v: k for k, v in FINISH_REASONS.items()}


def params_from_pb(pb: generate_pb2.SamplingParams) -> SamplingParams:
    """Unset optional fields take the domain defaults; validation is the caller's next step."""
    return SamplingParams(
        temperature=pb.temperature if pb.HasField("temperature") else 0.0,
        top_k=pb.top_k if pb.HasField("top_k") else 0,
        top_p=pb.top_p if pb.HasField("top_p") else 1.0,
        seed=pb.seed if pb.HasField("seed") else None,
        max_new_tokens=pb.max_new_tokens if pb.HasField("max_new_tokens") else DEFAULT_MAX_NEW_TOKENS,
        stop_token_ids=tuple(pb.stop_token_ids),
        stop=tuple(pb.stop),
        grammar=GrammarSpec(pb.grammar.kind, pb.grammar.source) if pb.HasField("grammar") else None,
    )


def params_to_pb(params: SamplingParams) -> generate_pb2.SamplingParams:
    pb = generate_pb2.SamplingParams(
        temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
        max_new_tokens=params.max_new_tokens, stop=list(params.stop), stop_token_ids=list(params.stop_token_ids),
    )
    if params.seed is not None:
        pb.seed = params.seed
    if params.grammar is not None:
        pb.grammar.kind, pb.grammar.source = params.grammar.kind, params.grammar.source
    return pb


def pack_ids(ids: list[int]) -> bytes:
    return np.asarray(ids, dtype="<i4").tobytes()


def unpack_ids(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<i4").tolist()


def level_to_pb(tokens: list[int], parents: list[int], q_rows: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> speculate_pb2.TreeLevel:
    width = max((len(ids) for ids, _ in q_rows.values()), default=0)
    rows = sorted(q_rows)
    ids = torch.full((len(rows), width), -1, dtype=torch.long)
    probs = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        row_ids, row_probs = q_rows[row]
        ids[i, : len(row_ids)], probs[i, : len(row_ids)] = row_ids, row_probs
    return speculate_pb2.TreeLevel(
        tokens=tokens, parents=parents, q_rows=rows, q_width=width,
        q_ids=ids.flatten().tolist(), q_probs=probs.flatten().tolist(),
    )


def level_from_pb(pb: speculate_pb2.TreeLevel) -> tuple[list[int], list[int], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    width = pb.q_width
    ids = torch.tensor(list(pb.q_ids), dtype=torch.long).view(len(pb.q_rows), width)
    probs = torch.tensor(list(pb.q_probs), dtype=torch.float32).view(len(pb.q_rows), width)
    q_rows = {}
    for i, row in enumerate(pb.q_rows):
        keep = ids[i] >= 0
        q_rows[int(row)] = (ids[i][keep], probs[i][keep])
    return list(pb.tokens), list(pb.parents), q_rows


def result_to_pb(result: VerifyResult, tree_size: int, tree_depth: int) -> speculate_pb2.RoundReply:
    return speculate_pb2.RoundReply(
        accepted_nodes=result.accepted_nodes, accepted_tokens=result.accepted_tokens, next_token=result.next_token,
        accepted_rank=result.accepted_rank, num_children=result.num_children,
        tree_size=tree_size, tree_depth=tree_depth,
    )


def result_from_pb(pb: speculate_pb2.RoundReply) -> VerifyResult:
    return VerifyResult(list(pb.accepted_nodes), list(pb.accepted_tokens), int(pb.next_token),
                        list(pb.accepted_rank), list(pb.num_children))


def features_to_pb(features: torch.Tensor, start: int) -> speculate_pb2.FeatureBlock:
    """Target features [n, H] of context tokens start.. as float16 bytes."""
    assert features.ndim == 2, features.shape
    data = features.detach().to(torch.float16).contiguous().numpy().astype("<f2").tobytes()
    return speculate_pb2.FeatureBlock(start=start, dim=features.shape[1], fp16=data)


def features_from_pb(pb: speculate_pb2.FeatureBlock) -> tuple[int, torch.Tensor]:
    """(start, features [n, dim] fp32); raises ValueError on a block whose size is not n × dim."""
    values = np.frombuffer(pb.fp16, dtype="<f2")
    if pb.dim == 0 or len(values) % pb.dim:
        raise ValueError(f"a feature block of {len(values)} values is not rows of {pb.dim}")
    return int(pb.start), torch.from_numpy(values.astype(np.float32)).view(-1, pb.dim)


def budget_to_pb(budget: DraftBudget, shape_parents: list[int]) -> speculate_pb2.DraftPlan:
    pb = speculate_pb2.DraftPlan(shape_parents=shape_parents, max_len=budget.max_len)
    if budget.gamma is not None:
        pb.gamma, pb.lam = budget.gamma, budget.lam
    if budget.min_confidence is not None:
        pb.min_confidence = budget.min_confidence
    return pb


def budget_from_pb(pb: speculate_pb2.DraftPlan) -> DraftBudget:
    return DraftBudget(
        max_len=pb.max_len,
        gamma=pb.gamma if pb.HasField("gamma") else None,
        lam=pb.lam if pb.HasField("lam") else None,
        min_confidence=pb.min_confidence if pb.HasField("min_confidence") else None,
    )


def call_from_pb(pb: generate_pb2.GenerateRequest) -> GenerateCall:
    spec = {}
    for name in ("mode", "draft_len", "tree_budget", "tree_depth"):
        if pb.speculation.HasField(name):
            spec[name] = getattr(pb.speculation, name)
    which = pb.WhichOneof("prompt")
    return GenerateCall(
        prompt_text=pb.text if which == "text" else None,
        prompt_ids=list(pb.token_ids.ids) if which == "token_ids" else None,
        chat=pb.chat, params=params_from_pb(pb.sampling), speculation=spec,
        session_id=pb.session_id, resume_from=pb.resume_from,
    )


def event_to_pb(event: ChunkEvent | CompletionEvent) -> generate_pb2.GenerateResponse:
    if isinstance(event, ChunkEvent):
        return generate_pb2.GenerateResponse(chunk=generate_pb2.Chunk(
            session_id=event.session_id, index=event.index, token_ids=event.token_ids, text=event.text,
            stats=generate_pb2.SpeculationStats(round=event.step, num_drafted=event.num_drafted,
                                                num_accepted=event.num_accepted, tree_size=event.tree_size,
                                                tree_depth=event.tree_depth)))
    return generate_pb2.GenerateResponse(completion=generate_pb2.Completion(
        session_id=event.session_id, finish_reason=FINISH_REASONS[event.finish_reason], seed=event.seed,
        text=event.text, error=event.error,
        usage=generate_pb2.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                                 rounds=event.rounds, num_draft_tokens=event.num_draft_tokens,
                                 num_accepted_tokens=event.num_accepted_tokens)))
