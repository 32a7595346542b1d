"""Protobuf <-> domain conversion, in one place: sampling parameters, packed token ids, rounds and
draft orders, token-tree levels, verify results, round reports and draft budgets. No math, no I/O."""

from __future__ import annotations

import math

import numpy as np
import torch

from specgrove.budget import DraftBudget
from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.generate import ChunkEvent, CompletionEvent, GenerateCall
from specgrove.grammar import GrammarSpec
from specgrove.limits import DEFAULT_LIMITS, Limits
from specgrove.round import DraftOrder, Round, RoundReport, RoundTiming
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
# The orchestrator's Generate stream sends the session id in its initial metadata, before any round
# (and before any later store call can fail), so a client can resume a stream that failed early.
SESSION_ID_METADATA = "specgrove-session-id"


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
    """One level's (tokens, parents, q rows); raises InvalidArgument on a level whose fields do not
    line up (a rogue or broken drafter). Links between levels are checked by ``tree_levels_from_pb``."""
    width, rows = pb.q_width, list(pb.q_rows)
    if len(pb.tokens) != len(pb.parents):
        raise InvalidArgument("tree", f"a level has {len(pb.tokens)} tokens but {len(pb.parents)} parents")
    if len(pb.q_ids) != len(rows) * width or len(pb.q_probs) != len(rows) * width:
        raise InvalidArgument("tree", f"q_ids ({len(pb.q_ids)}) and q_probs ({len(pb.q_probs)}) must each hold "
                                      f"q_rows × q_width = {len(rows)} × {width} values")
    if len(set(rows)) != len(rows):
        raise InvalidArgument("tree", "a q row appears twice in a level")
    if any(i < -1 for i in pb.q_ids):
        raise InvalidArgument("tree", "q_ids must be token ids or -1 (padding)")
    if any(not (math.isfinite(q) and 0.0 <= q <= 1.0) for q in pb.q_probs):
        raise InvalidArgument("tree", "q_probs must be probabilities in [0, 1]")
    ids = torch.tensor(list(pb.q_ids), dtype=torch.long).view(len(rows), width)
    probs = torch.tensor(list(pb.q_probs), dtype=torch.float32).view(len(rows), width)
    q_rows = {}
    for i, row in enumerate(rows):
        keep = ids[i] >= 0
        q_rows[int(row)] = (ids[i][keep], probs[i][keep])
    return list(pb.tokens), list(pb.parents), q_rows


def tree_levels_from_pb(levels: list[speculate_pb2.TreeLevel], vocab_size: int):
    """The levels of a Verify stream, checked as one tree: every parent an earlier node (or −1),
    every q row the root or an existing node and sent once, every token and q id in the vocabulary.
    Raises InvalidArgument / OutOfRange, so a malformed tree never reaches the verifier's math."""
    out, seen_rows, nodes = [], set(), 0
    for pb in levels:
        tokens, parents, q_rows = level_from_pb(pb)
        for parent in parents:
            if not -1 <= parent < nodes:
                raise InvalidArgument("tree", f"node {nodes} has parent {parent}: parents must be earlier nodes or -1")
            nodes += 1
        if any(not 0 <= t < vocab_size for t in tokens):
            raise OutOfRange("tree", f"token ids must be in [0, {vocab_size})")
        for row, (ids, _) in q_rows.items():
            if row > nodes or row in seen_rows:
                raise InvalidArgument("tree", f"q row {row} is not the root (0) or a node sent so far (1..{nodes}), "
                                              "or was sent twice")
            if ids.numel() and int(ids.max()) >= vocab_size:
                raise OutOfRange("tree", f"q ids must be in [0, {vocab_size})")
            seen_rows.add(row)
        out.append((tokens, parents, q_rows))
    return out


def result_to_pb(result: VerifyResult, tree_size: int, tree_depth: int) -> speculate_pb2.RoundReply:
    return speculate_pb2.RoundReply(
        accepted_nodes=result.accepted_nodes, accepted_tokens=result.accepted_tokens, next_token=result.next_token,
        accepted_rank=result.accepted_rank, num_children=result.num_children,
        tree_size=tree_size, tree_depth=tree_depth,
    )


def result_from_pb(pb: speculate_pb2.RoundReply) -> VerifyResult:
    return VerifyResult(list(pb.accepted_nodes), list(pb.accepted_tokens), int(pb.next_token),
                        list(pb.accepted_rank), list(pb.num_children))


def round_to_pb(r: Round, ahead_room: int = 0) -> speculate_pb2.RoundContext:
    """ahead_room: a plain step's (Decode): the verifier may run the next step ahead."""
    pb = speculate_pb2.RoundContext(session_id=r.session_id, step=r.step, context=pack_ids(r.context),
                                    sampling=params_to_pb(r.params), seed=r.seed, output_start=r.output_start, run=r.run,
                                    ahead_room=ahead_room)
    if r.features_from is not None:
        pb.features_from = r.features_from
    return pb


def round_from_pb(pb: speculate_pb2.RoundContext) -> Round:
    return Round(pb.session_id, pb.step, tuple(unpack_ids(pb.context)), params_from_pb(pb.sampling), pb.seed,
                 pb.output_start, pb.run, pb.features_from if pb.HasField("features_from") else None)


def order_to_pb(order: DraftOrder) -> speculate_pb2.DraftRequest:
    return speculate_pb2.DraftRequest(
        round=round_to_pb(order.round), plan=budget_to_pb(order.budget, list(order.shape_parents)),
        verifier=order.verifier, verify_timeout_ms=round(order.verify_timeout_s * 1000) if order.verify_timeout_s else 0,
        ahead=order.ahead, ahead_room=order.ahead_room, guess=order.guess)


def order_from_pb(pb: speculate_pb2.DraftRequest) -> DraftOrder:
    """Raises InvalidArgument on a plan whose pass costs are not positive and finite."""
    return DraftOrder(round_from_pb(pb.round), tuple(pb.plan.shape_parents), budget_from_pb(pb.plan), pb.verifier,
                      pb.verify_timeout_ms / 1000 if pb.verify_timeout_ms else None, pb.ahead, pb.ahead_room, pb.guess)


_TIMING_FIELDS = ("draft_ms", "verify_ms", "round_ms", "tree_bytes", "feature_bytes", "sessions", "pass_tokens",
                  "pass_rows", "ahead", "overlap_ms", "guessed", "guesses", "steps_ahead")


def report_to_pb(report: RoundReport) -> speculate_pb2.RoundReply:
    pb = result_to_pb(report.result, report.tree_size, report.tree_depth)
    for name in _TIMING_FIELDS:
        setattr(pb.timing, name, getattr(report.timing, name))
    return pb


def report_from_pb(pb: speculate_pb2.RoundReply) -> RoundReport:
    timing = RoundTiming(**{name: getattr(pb.timing, name) for name in _TIMING_FIELDS})
    return RoundReport(result_from_pb(pb), pb.tree_size, pb.tree_depth, timing)


def features_to_pb(features: torch.Tensor, start: int) -> speculate_pb2.FeatureBlock:
    """Target features [n, H] of context tokens start.. as float16 bytes."""
    assert features.ndim == 2, features.shape
    # converted by numpy: a gRPC handler thread runs no torch kernels (see specgrove.compute)
    data = features.detach().float().contiguous().numpy().astype("<f2").tobytes()
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
    if budget.pass_costs is not None:
        pb.pass_costs.extend(budget.pass_costs)
    return pb


def budget_from_pb(pb: speculate_pb2.DraftPlan) -> DraftBudget:
    """Raises InvalidArgument on pass costs that are not positive and finite (they divide)."""
    if not all(cost > 0 and math.isfinite(cost) for cost in pb.pass_costs):
        raise InvalidArgument("plan.pass_costs", f"must be positive and finite, got {list(pb.pass_costs)}")
    return DraftBudget(
        max_len=pb.max_len,
        gamma=pb.gamma if pb.HasField("gamma") else None,
        lam=pb.lam if pb.HasField("lam") else None,
        min_confidence=pb.min_confidence if pb.HasField("min_confidence") else None,
        pass_costs=tuple(pb.pass_costs) or None,
    )


def call_from_pb(pb: generate_pb2.GenerateRequest, limits: Limits = DEFAULT_LIMITS) -> GenerateCall:
    """The call, with the checks that need no model: ``chat`` needs text, and the serving
    process's limits on prompt ids and stop strings (text prompts meet the context-length check
    once encoded)."""
    which = pb.WhichOneof("prompt")
    if pb.chat and which == "token_ids":
        raise InvalidArgument("chat", "applies the chat template to text; send text, or token_ids without chat")
    if which == "token_ids" and len(pb.token_ids.ids) > limits.max_prompt_tokens:
        raise OutOfRange("token_ids", f"at most {limits.max_prompt_tokens} prompt tokens, got {len(pb.token_ids.ids)}")
    spec = {}
    for name in ("mode", "draft_len", "tree_budget", "tree_depth"):
        if pb.speculation.HasField(name):
            spec[name] = getattr(pb.speculation, name)
    params = params_from_pb(pb.sampling)
    params.check_limits(limits)  # the rest of SamplingParams.validate runs with the model's sizes
    return GenerateCall(
        prompt_text=pb.text if which == "text" else None,
        prompt_ids=list(pb.token_ids.ids) if which == "token_ids" else None,
        chat=pb.chat, params=params, speculation=spec,
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
