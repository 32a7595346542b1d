from specgrove.v1 import generate_pb2 as _generate_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoundContext(_message.Message):
    __slots__ = ("session_id", "step", "context", "sampling", "seed", "features_from", "output_start", "run", "ahead_room")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FROM_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_START_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    AHEAD_ROOM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: int
    context: bytes
    sampling: _generate_pb2.SamplingParams
    seed: int
    features_from: int
    output_start: int
    run: str
    ahead_room: int
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[int] = ..., context: _Optional[bytes] = ..., sampling: _Optional[_Union[_generate_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ..., features_from: _Optional[int] = ..., output_start: _Optional[int] = ..., run: _Optional[str] = ..., ahead_room: _Optional[int] = ...) -> None: ...

class FeatureBlock(_message.Message):
    __slots__ = ("start", "dim", "fp16")
    START_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FP16_FIELD_NUMBER: _ClassVar[int]
    start: int
    dim: int
    fp16: bytes
    def __init__(self, start: _Optional[int] = ..., dim: _Optional[int] = ..., fp16: _Optional[bytes] = ...) -> None: ...

class DraftPlan(_message.Message):
    __slots__ = ("shape_parents", "max_len", "gamma", "lam", "min_confidence", "pass_costs")
    SHAPE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    LAM_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PASS_COSTS_FIELD_NUMBER: _ClassVar[int]
    shape_parents: _containers.RepeatedScalarFieldContainer[int]
    max_len: int
    gamma: float
    lam: float
    min_confidence: float
    pass_costs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape_parents: _Optional[_Iterable[int]] = ..., max_len: _Optional[int] = ..., gamma: _Optional[float] = ..., lam: _Optional[float] = ..., min_confidence: _Optional[float] = ..., pass_costs: _Optional[_Iterable[float]] = ...) -> None: ...

class DraftRequest(_message.Message):
    __slots__ = ("round", "plan", "verifier", "verify_timeout_ms", "ahead", "ahead_room", "guess")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    VERIFY_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    AHEAD_ROOM_FIELD_NUMBER: _ClassVar[int]
    GUESS_FIELD_NUMBER: _ClassVar[int]
    round: RoundContext
    plan: DraftPlan
    verifier: str
    verify_timeout_ms: int
    ahead: bool
    ahead_room: int
    guess: bool
    def __init__(self, round: _Optional[_Union[RoundContext, _Mapping]] = ..., plan: _Optional[_Union[DraftPlan, _Mapping]] = ..., verifier: _Optional[str] = ..., verify_timeout_ms: _Optional[int] = ..., ahead: _Optional[bool] = ..., ahead_room: _Optional[int] = ..., guess: _Optional[bool] = ...) -> None: ...

class TreeLevel(_message.Message):
    __slots__ = ("tokens", "parents", "q_rows", "q_width", "q_ids", "q_probs")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    Q_ROWS_FIELD_NUMBER: _ClassVar[int]
    Q_WIDTH_FIELD_NUMBER: _ClassVar[int]
    Q_IDS_FIELD_NUMBER: _ClassVar[int]
    Q_PROBS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    parents: _containers.RepeatedScalarFieldContainer[int]
    q_rows: _containers.RepeatedScalarFieldContainer[int]
    q_width: int
    q_ids: _containers.RepeatedScalarFieldContainer[int]
    q_probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., parents: _Optional[_Iterable[int]] = ..., q_rows: _Optional[_Iterable[int]] = ..., q_width: _Optional[int] = ..., q_ids: _Optional[_Iterable[int]] = ..., q_probs: _Optional[_Iterable[float]] = ...) -> None: ...

class GuessedRound(_message.Message):
    __slots__ = ("emitted", "levels")
    EMITTED_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    emitted: _containers.RepeatedScalarFieldContainer[int]
    levels: _containers.RepeatedCompositeFieldContainer[TreeLevel]
    def __init__(self, emitted: _Optional[_Iterable[int]] = ..., levels: _Optional[_Iterable[_Union[TreeLevel, _Mapping]]] = ...) -> None: ...

class GuessRequest(_message.Message):
    __slots__ = ("round", "guesses", "timeout_ms", "chain")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GUESSES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    round: RoundContext
    guesses: _containers.RepeatedCompositeFieldContainer[GuessedRound]
    timeout_ms: int
    chain: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round: _Optional[_Union[RoundContext, _Mapping]] = ..., guesses: _Optional[_Iterable[_Union[GuessedRound, _Mapping]]] = ..., timeout_ms: _Optional[int] = ..., chain: _Optional[_Iterable[int]] = ...) -> None: ...

class TreeMessage(_message.Message):
    __slots__ = ("header", "level")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    header: RoundContext
    level: TreeLevel
    def __init__(self, header: _Optional[_Union[RoundContext, _Mapping]] = ..., level: _Optional[_Union[TreeLevel, _Mapping]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("draft_ms", "verify_ms", "round_ms", "tree_bytes", "feature_bytes", "sessions", "pass_tokens", "pass_rows", "ahead", "overlap_ms", "guessed", "guesses", "steps_ahead")
    DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    ROUND_MS_FIELD_NUMBER: _ClassVar[int]
    TREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PASS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PASS_ROWS_FIELD_NUMBER: _ClassVar[int]
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_MS_FIELD_NUMBER: _ClassVar[int]
    GUESSED_FIELD_NUMBER: _ClassVar[int]
    GUESSES_FIELD_NUMBER: _ClassVar[int]
    STEPS_AHEAD_FIELD_NUMBER: _ClassVar[int]
    draft_ms: float
    verify_ms: float
    round_ms: float
    tree_bytes: int
    feature_bytes: int
    sessions: int
    pass_tokens: float
    pass_rows: int
    ahead: bool
    overlap_ms: float
    guessed: bool
    guesses: int
    steps_ahead: int
    def __init__(self, draft_ms: _Optional[float] = ..., verify_ms: _Optional[float] = ..., round_ms: _Optional[float] = ..., tree_bytes: _Optional[int] = ..., feature_bytes: _Optional[int] = ..., sessions: _Optional[int] = ..., pass_tokens: _Optional[float] = ..., pass_rows: _Optional[int] = ..., ahead: _Optional[bool] = ..., overlap_ms: _Optional[float] = ..., guessed: _Optional[bool] = ..., guesses: _Optional[int] = ..., steps_ahead: _Optional[int] = ...) -> None: ...

class RoundReply(_message.Message):
    __slots__ = ("accepted_nodes", "accepted_tokens", "next_token", "accepted_rank", "num_children", "tree_size", "tree_depth", "timing", "features", "missed", "guess")
    ACCEPTED_NODES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_CHILDREN_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TREE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    GUESS_FIELD_NUMBER: _ClassVar[int]
    accepted_nodes: _containers.RepeatedScalarFieldContainer[int]
    accepted_tokens: _containers.RepeatedScalarFieldContainer[int]
    next_token: int
    accepted_rank: _containers.RepeatedScalarFieldContainer[int]
    num_children: _containers.RepeatedScalarFieldContainer[int]
    tree_size: int
    tree_depth: int
    timing: Timing
    features: FeatureBlock
    missed: bool
    guess: int
    def __init__(self, accepted_nodes: _Optional[_Iterable[int]] = ..., accepted_tokens: _Optional[_Iterable[int]] = ..., next_token: _Optional[int] = ..., accepted_rank: _Optional[_Iterable[int]] = ..., num_children: _Optional[_Iterable[int]] = ..., tree_size: _Optional[int] = ..., tree_depth: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., features: _Optional[_Union[FeatureBlock, _Mapping]] = ..., missed: _Optional[bool] = ..., guess: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("session_id", "run")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run: str
    def __init__(self, session_id: _Optional[str] = ..., run: _Optional[str] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("role", "model", "vocab_size", "vocab_hash", "max_context", "load", "instance", "min_pass_rows")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_HASH_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    MIN_PASS_ROWS_FIELD_NUMBER: _ClassVar[int]
    role: str
    model: str
    vocab_size: int
    vocab_hash: str
    max_context: int
    load: WorkerLoad
    instance: str
    min_pass_rows: int
    def __init__(self, role: _Optional[str] = ..., model: _Optional[str] = ..., vocab_size: _Optional[int] = ..., vocab_hash: _Optional[str] = ..., max_context: _Optional[int] = ..., load: _Optional[_Union[WorkerLoad, _Mapping]] = ..., instance: _Optional[str] = ..., min_pass_rows: _Optional[int] = ...) -> None: ...

class WorkerLoad(_message.Message):
    __slots__ = ("sessions", "max_sessions", "waiting", "kv_tokens", "max_kv_tokens", "pass_ms", "tokens_per_pass", "draining", "link_ms")
    class LinkMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_KV_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PASS_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_PASS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    LINK_MS_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    max_sessions: int
    waiting: int
    kv_tokens: int
    max_kv_tokens: int
    pass_ms: float
    tokens_per_pass: float
    draining: bool
    link_ms: _containers.ScalarMap[str, float]
    def __init__(self, sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_tokens: _Optional[int] = ..., max_kv_tokens: _Optional[int] = ..., pass_ms: _Optional[float] = ..., tokens_per_pass: _Optional[float] = ..., draining: _Optional[bool] = ..., link_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...
