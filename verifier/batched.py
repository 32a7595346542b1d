"""Many sessions' target passes in one forward pass (continuous batching), their KV in fixed slots.

Every session the verifier holds owns a **slot**: a row of one preallocated KV tensor per layer,
[slots, kv_heads, capacity, head_dim]. A pass gathers rows of different sessions, each feeding
its own uncached context tail and tree nodes (a chain, a Sequoia tree, a plain step, a prefill),
right-padded to the longest; row b writes its new keys at its own cached length. The 4D float mask
gives each row its cached prefix and its tree mask; padded queries and keys past a row's length
are blocked. Nothing is copied per round: a rejected draft is dropped by moving the row's length
back, and an accepted tree path is moved into place within its row (a chain's prefix stays put).
When the rows of a pass are slots 0..B−1 the attention reads a view of the tensor; otherwise
``index_select`` gathers them.

``SlotCache`` is what the model's attention layers see (they call ``update``); ``BatchedTarget``
owns the slots and turns rows into one pass and back into per-row logits and features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specgrove.models import CausalLM, common_prefix_length
from specgrove.tree_mask import node_positions, tree_attention_mask

INITIAL_CAPACITY = 256  # positions per slot; doubled (one copy) when a row needs more


class SlotCache:
    """The KV of many sessions, a slot each; within a pass, ``update`` writes each row's new keys
    at its offset and returns the rows' keys up to the pass's key length (what transformers'
    llama attention calls). Both the slot count and the positions per slot grow on demand
    (doubling, one copy), so memory follows the high-water mark of sessions × context, not the
    configured maximum; ``reset`` drops it all when the last session leaves."""

    def __init__(self, capacity: int = INITIAL_CAPACITY):
        self.slots, self.capacity = 0, capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._rows = self._write_rows = self._write_cols = None
        self._key_len = 0

    def begin(self, rows: list[int], starts: list[int], width: int) -> int:
        """Set up one pass: row b is slot rows[b] and writes ``width`` positions from starts[b].
        Returns the key length the pass attends over."""
        need = max(starts) + width
        slots = max(max(rows) + 1, self.slots)
        capacity = self.capacity if need <= self.capacity else max(need, 2 * self.capacity)
        if slots > self.slots:
            slots = max(slots, 2 * self.slots)
        self._grow(slots, capacity)
        self._key_len = need
        device = self.keys[0].device if self.keys else torch.device("cpu")
        index = torch.tensor(rows, dtype=torch.long, device=device)
        self._rows = None if rows == list(range(len(rows))) else index  # slots 0..B−1: a view suffices
        self._write_rows = index[:, None].expand(len(rows), width)
        self._write_cols = torch.tensor(starts, dtype=torch.long, device=device)[:, None] + torch.arange(width, device=device)
        return need

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """key, value: [B, kv_heads, width, head_dim] of the pass's new tokens."""
        if layer_idx == len(self.keys):  # the first pass: allocate this layer from the model's shapes
            shape = (self.slots, key.shape[1], self.capacity, key.shape[3])
            self.keys.append(torch.zeros(shape, dtype=key.dtype, device=key.device))
            self.values.append(torch.zeros(shape, dtype=value.dtype, device=value.device))
            self._write_rows, self._write_cols = self._write_rows.to(key.device), self._write_cols.to(key.device)
            self._rows = None if self._rows is None else self._rows.to(key.device)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._write_rows, :, self._write_cols] = key.transpose(1, 2)  # [B, width, h, d] into each row
        values[self._write_rows, :, self._write_cols] = value.transpose(1, 2)
        if self._rows is None:
            return keys[: key.shape[0], :, : self._key_len], values[: key.shape[0], :, : self._key_len]
        return (keys.index_select(0, self._rows)[:, :, : self._key_len],
                values.index_select(0, self._rows)[:, :, : self._key_len])

    @torch.inference_mode()
    def move(self, slot: int, sources: list[int], destinations: list[int]) -> None:
        """Within a slot, copy the KV at positions ``sources`` to ``destinations`` (a tree path)."""
        src = torch.tensor(sources, dtype=torch.long)
        dst = torch.tensor(destinations, dtype=torch.long)
        for tensors in (self.keys, self.values):
            for layer in tensors:
                row = layer[slot]
                row.index_copy_(1, dst.to(row.device), row.index_select(1, src.to(row.device)))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._key_len

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def reset(self) -> None:
        self.keys, self.values, self.slots = [], [], 0

    def _grow(self, slots: int, capacity: int) -> None:
        if (slots, capacity) == (self.slots, self.capacity):
            return
        for tensors in (self.keys, self.values):
            for i, layer in enumerate(tensors):
                grown = layer.new_zeros((slots, layer.shape[1], capacity, layer.shape[3]))
                grown[: layer.shape[0], :, : layer.shape[2]] = layer
                tensors[i] = grown
        self.slots, self.capacity = slots, capacity


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
        self.model = model
        self.keep_features = keep_features
        self.cache = SlotCache(min(capacity, model.max_positions))
        self._used: set[int] = set()

    def open(self) -> SlotState:
        """A fresh slot: the lowest free one (a pass over slots 0..B−1 reads a view)."""
        slot = next(i for i in range(len(self._used) + 1) if i not in self._used)
        self._used.add(slot)
        return SlotState(slot, features=torch.zeros(0, 0) if self.keep_features else None)

    def close(self, state: SlotState) -> None:
        self._used.discard(state.slot)
        state.tokens, state.node_tokens = [], []
        if not self._used:  # the last session left: give the memory back
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
        key_len = self.cache.begin([row.state.slot for row in rows], [row.keep for row in rows], width)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.full((len(rows), 1, width, key_len), torch.finfo(torch.float32).min)
        for b, row in enumerate(rows):
            n = len(row.feed)
            ids[b, :n] = torch.tensor(row.feed)
            positions[b, :n] = torch.tensor(row.positions)
            positions[b, n:] = row.positions[-1]  # padding: any position; its queries are ignored
            mask[b, 0, :n, : row.keep + n] = self._row_mask(row)
            mask[b, 0, n:, 0] = 0.0  # padded queries see one key: no all-blocked softmax row
        picks = [(b, len(row.feed) - 1 - len(row.node_tokens), len(row.feed)) for b, row in enumerate(rows)]
        hidden, logits = self.forward(ids, positions, mask, picks)
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
                picks: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's pass: features [B, width, H] and the LM head over the picked positions only
        (row b, begin, end), concatenated: [Σ(end − begin), V] fp32 on the CPU."""
        device = self.model.model.device
        hidden = self.model.model.model(input_ids=ids.to(device), position_ids=positions.to(device),
                                        attention_mask=mask.to(device), past_key_values=self.cache,
                                        use_cache=True).last_hidden_state
        wanted = torch.cat([hidden[b, begin:end] for b, begin, end in picks])
        return hidden, self.model.model.lm_head(wanted).float().cpu()

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
