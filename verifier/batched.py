"""Many sessions' target passes in one forward pass (continuous batching), their KV in fixed slots.

Every session the verifier holds owns a **slot** of the runner's ``KVSlots`` (specgrove/runner.py):
a row of one preallocated key tensor and one value tensor, [layers, slots, kv_heads, capacity,
head_dim]. A pass gathers rows of different sessions, each feeding its own uncached context tail and
tree nodes (a chain, a Sequoia tree, a plain step, a prefill), right-padded to the longest; row b
writes its new keys at its own cached length. The float mask gives each row its cached prefix and
its tree mask; padded queries and stale cached positions are blocked. Nothing is copied per round:
a rejected draft is dropped by moving the row's length back, and an accepted tree path is moved
into place within its row (a chain's prefix stays put).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from specgrove.errors import ModelLoadError
from specgrove.models import CausalLM, common_prefix_length
from specgrove.runner import INITIAL_CAPACITY
from specgrove.tree_mask import node_positions, tree_attention_mask

BLOCKED = torch.finfo(torch.float32).min
# Compiled passes (a GPU): slots and positions allocated at start, passes captured for these shapes.
WARM_ROWS = (1, 2, 4, 8, 16)
WARM_TOKENS = (1, 2, 4, 8, 16)
COMPILED_CAPACITY = 2048

log = logging.getLogger(__name__)


@dataclass
class SlotState:
    """What one slot holds: the context tokens cached in order, then the last pass's tree nodes."""

    slot: int
    tokens: list[int] = field(default_factory=list)
    node_tokens: list[int] = field(default_factory=list)
    features: torch.Tensor | None = None  # [cached, H] when the target keeps features


@dataclass
class Row:
    """One session's part of a pass: feed the uncached tail of ``context`` and the tree nodes."""

    state: SlotState
    context: list[int]
    node_tokens: list[int]
    parents: list[int]
    # filled by BatchedTarget.plan
    keep: int = 0
    feed: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


class BatchedTarget:
    """A target model serving many sessions' passes at once (see the module docstring)."""

    def __init__(self, model: CausalLM, keep_features: bool = False, capacity: int = INITIAL_CAPACITY):
        if model.runner is None:
            raise ModelLoadError(f"the batched verifier runs Llama-family models (llama, qwen2, qwen3, mistral); "
                                 f"{model.name!r} is a {model.model.config.model_type!r}")
        self.model = model
        self.runner = model.runner
        self.keep_features = keep_features
        self.cache = self.runner.new_slots(min(capacity, model.max_positions))
        self._used: set[int] = set()
        if self.runner.compile:  # compiled passes read fixed slots: allocate them and capture now
            self.cache.ensure(WARM_ROWS[-1], min(COMPILED_CAPACITY, model.max_positions))
            seconds = self.runner.warm_up([(b, n) for b in WARM_ROWS for n in WARM_TOKENS], slots=self.cache,
                                          progress=True)
            log.warning("captured the verifier's passes for %d shapes in %.1f s", len(WARM_ROWS) * len(WARM_TOKENS),
                        seconds)

    def open(self) -> SlotState:
        """A fresh slot: the lowest free one (a pass over slots 0..B−1 reads a view)."""
        slot = next(i for i in range(len(self._used) + 1) if i not in self._used)
        self._used.add(slot)
        return SlotState(slot, features=torch.zeros(0, 0) if self.keep_features else None)

    def close(self, state: SlotState) -> None:
        self._used.discard(state.slot)
        state.tokens, state.node_tokens = [], []
        if not self._used and not self.runner.compile:  # the last session left: give the memory back
            self.cache.reset()

    @torch.inference_mode()
    def run(self, rows: list[Row]) -> list[torch.Tensor]:
        """One forward pass over ``rows`` (distinct slots). Returns each row's logits
        [1 + len(node_tokens), V]: the last context token's (the root), then each node's."""
        for row in rows:
            self._plan(row)
        width = max(len(row.feed) for row in rows)
        if len(rows) * width < self.model.min_pass_rows and width > 1:  # the CPU's slow 2–3 row products
            width = -(-self.model.min_pass_rows // len(rows))
        key_len = max(row.keep for row in rows) + width  # the slots' columns the pass reads
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.full((len(rows), 1, width, key_len), BLOCKED)
        for b, row in enumerate(rows):
            n = len(row.feed)
            ids[b, :n] = torch.tensor(row.feed)
            positions[b, :n] = torch.tensor(row.positions)
            positions[b, n:] = row.positions[-1]  # padding: any position; its queries are ignored
            mask[b, 0, :n, : row.keep + n] = self._row_mask(row)
            mask[b, 0, n:, 0] = 0.0  # padded queries see one key: no all-blocked softmax row
        picks = [(b, len(row.feed) - 1 - len(row.node_tokens), len(row.feed)) for b, row in enumerate(rows)]
        hidden, logits = self.forward(ids, positions, mask, picks, [row.state.slot for row in rows],
                                      [row.keep for row in rows])
        out = list(logits.split([end - begin for _, begin, end in picks]))
        for b, row in enumerate(rows):
            state = row.state
            state.tokens = list(row.context)
            state.node_tokens = list(row.node_tokens)
            if state.features is not None:
                fed = hidden[b, : len(row.feed)].float().cpu()
                kept = state.features[: row.keep]
                state.features = fed if len(kept) == 0 else torch.cat([kept, fed])
        return out

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                picks: list[tuple[int, int, int]], slots: list[int], starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's pass (row b in slot slots[b], writing from starts[b]): features [B, width, H]
        and the LM head over the picked positions only (row b, begin, end), concatenated:
        [Σ(end − begin), V] fp32 on the CPU."""
        hidden = self.runner.pass_(self.cache, ids, positions, mask, slots, starts)
        wanted = torch.cat([hidden[b, begin:end] for b, begin, end in picks])
        return hidden, self.runner.logits(wanted)

    @torch.inference_mode()
    def keep_path(self, state: SlotState, path: list[int]) -> None:
        """Keep the context and the accepted root-to-node ``path`` of the last pass's nodes."""
        base = len(state.tokens)
        if path != list(range(len(path))):  # not a prefix of the nodes (a tree): move them into place
            self.cache.move(state.slot, [base + n for n in path], [base + i for i in range(len(path))])
            if state.features is not None:
                moved = state.features.index_select(0, torch.tensor([base + n for n in path], dtype=torch.long))
                state.features = torch.cat([state.features[:base], moved])
        if state.features is not None:
            state.features = state.features[: base + len(path)]
        state.tokens = state.tokens + [state.node_tokens[n] for n in path]
        state.node_tokens = []

    def _plan(self, row: Row) -> None:
        assert len(row.context) <= self.model.max_positions
        row.keep = self.reusable(row.state, row.context)
        row.feed = row.context[row.keep:] + row.node_tokens
        row.positions = list(range(row.keep, len(row.context))) + node_positions(len(row.context), row.parents)

    @staticmethod
    def reusable(state: SlotState, context: list[int]) -> int:
        """How much of ``context`` the slot's cache already holds and a pass keeps (it feeds ≥ 1 token)."""
        return min(common_prefix_length(state.tokens, context), len(context) - 1)

    @staticmethod
    def _row_mask(row: Row) -> torch.Tensor:  # [fed, keep + fed]
        return tree_attention_mask(len(row.context), len(row.context) - row.keep, row.parents, 0,
                                   len(row.parents))[0, 0]
