"""The runner's pass equals transformers' forward: Llama (tied and untied), Qwen2 (qkv bias) and
Qwen3 (q/k norms) shapes, prepacked and plain weights, one row and many rows at different cached
lengths with tree masks, and compiled against eager."""

import pytest
import torch

from specgrove.runner import KVSlots, LlamaRunner, supports
from specgrove.tree_mask import node_positions, tree_attention_mask

TOLERANCE = 2e-4  # fp32 logits of a random model; the orders of summation differ


def _model(kind: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True)).eval()
    if kind == "llama-untied-rope-scaled":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32, "rope_theta": 500000.0}
        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16)).eval()


def _reference(model, ids: list[int], positions: list[int] | None = None, mask=None) -> torch.Tensor:
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]),
                    position_ids=None if positions is None else torch.tensor([positions]),
                    attention_mask=mask)
    return out.logits[0]


def _pass(runner: LlamaRunner, slots: KVSlots, rows: list[int], starts: list[int], feeds: list[list[int]],
          positions: list[list[int]], own_masks: list[torch.Tensor]) -> torch.Tensor:
    """One runner pass as the verifier makes it: row b's own mask [n, start + n] in its slot's
    coordinates, rows right-padded, padded queries seeing column 0."""
    width = max(len(f) for f in feeds)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.full((len(rows), 1, width, max(starts) + width), torch.finfo(torch.float32).min)
    for b, (feed, start, own) in enumerate(zip(feeds, starts, own_masks)):
        n = len(feed)
        ids[b, :n], pos[b, :n] = torch.tensor(feed), torch.tensor(positions[b])
        mask[b, 0, :n, : start + n] = own
        mask[b, 0, n:, 0] = 0.0
    hidden = runner.pass_(slots, ids, pos, mask, rows, starts)
    return runner.logits(hidden.reshape(-1, hidden.shape[-1])).view(len(rows), width, -1)


def _causal(start: int, n: int) -> torch.Tensor:
    return tree_attention_mask(start + n, n, [], 0, 0)[0, 0]


@pytest.mark.parametrize("kind", ["llama", "llama-untied-rope-scaled", "qwen2", "qwen3"])
@pytest.mark.parametrize("packed", [True, False])
def test_prefill_then_chain_and_tree_match_transformers(kind, packed):
    model = _model(kind)
    assert supports(model)
    runner = LlamaRunner(model, compile=False, packed=packed)  # unpacked: F.linear, as on a GPU
    context = [5, 17, 3, 44, 9, 61, 2, 30, 12, 8]
    slots = runner.new_slots(capacity=16)  # grows during the test
    got = _pass(runner, slots, [0], [0], [context], [list(range(10))], [_causal(0, 10)])[0]
    assert (got - _reference(model, context)).abs().max() < TOLERANCE
    # a tree on the cached context: node i's logits equal a causal pass over the context and its path
    parents, nodes = [-1, -1, 0, 0, 2], [70, 71, 72, 73, 74]
    positions = node_positions(len(context), parents)
    own = tree_attention_mask(len(context), 0, parents, 0, len(parents))[0, 0]
    got = _pass(runner, slots, [0], [len(context)], [nodes], [positions], [own])[0]
    for i, path in enumerate([[0], [1], [0, 2], [0, 3], [0, 2, 4]]):
        expected = _reference(model, context + [nodes[j] for j in path])[-1]
        assert (got[i] - expected).abs().max() < TOLERANCE, (kind, i)


def test_rows_at_different_lengths_in_one_pass_match_their_own_passes():
    model = _model("llama", seed=1)
    runner = LlamaRunner(model, compile=False)
    slots = runner.new_slots(capacity=8)
    contexts = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [30, 31, 32, 33, 34]]
    for slot, context in zip([2, 0, 1], contexts):  # prefill each on its own, slots out of order
        _pass(runner, slots, [slot], [0], [context], [list(range(len(context)))], [_causal(0, len(context))])
    assert slots.slots >= 3
    feeds = [[40, 41], [50, 51, 52, 53], [60]]  # chains of different lengths, right-padded
    got = _pass(runner, slots, [2, 0, 1], [len(c) for c in contexts], feeds,
                [list(range(len(c), len(c) + len(f))) for c, f in zip(contexts, feeds)],
                [_causal(len(c), len(f)) for c, f in zip(contexts, feeds)])
    for b, (context, feed) in enumerate(zip(contexts, feeds)):
        expected = _reference(model, context + feed)[-len(feed):]
        assert (got[b, : len(feed)] - expected).abs().max() < TOLERANCE, b


def test_moving_a_path_into_place_keeps_its_keys():
    slots = KVSlots(layers=2, kv_heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"), capacity=4)
    slots.ensure(1, 3)
    assert (slots.slots, slots.capacity) == (1, 4)
    slots.ensure(2, 6)
    assert (slots.slots, slots.capacity) == (2, 8)  # both doubled, the old contents kept
    new = torch.arange(2 * 2 * 1 * 6 * 2, dtype=torch.float32).view(2, 2, 1, 6, 2)
    slots.keys[:, :, :, :6] = new
    slots.values[:, :, :, :6] = -new
    slots.move(1, [4, 5], [1, 2])
    assert torch.equal(slots.keys[:, 1, :, 1:3], new[:, 1, :, 4:6])
    assert torch.equal(slots.values[:, 1, :, 1:3], -new[:, 1, :, 4:6])
    assert torch.equal(slots.keys[:, 0, :, :6], new[:, 0])  # the other slot is untouched


@pytest.mark.slow
def test_compiled_passes_agree_with_eager():
    """The compiled pass (inductor, as a GPU or SPECGROVE_COMPILE=1 runs it) against the eager one
    on the same inputs: within 1e-4 on the logits."""
    model = _model("llama", seed=2)
    eager, compiled = LlamaRunner(model, compile=False), LlamaRunner(model, compile=True)
    assert compiled.warm_up(shapes=((1, 4),), context=4) > 0  # the one bucket below: (1 row, 4 tokens, 64 keys)
    context, chain = [3, 14, 15, 92], [89, 79, 32, 38]
    results = []
    for runner in (eager, compiled):
        slots = runner.new_slots()
        _pass(runner, slots, [0], [0], [context], [list(range(4))], [_causal(0, 4)])
        results.append(_pass(runner, slots, [0], [4], [chain], [list(range(4, 8))], [_causal(4, 4)]))
    assert (results[0] - results[1]).abs().max() < 1e-4
    assert compiled.compile_seconds > 0


def test_a_pass_padded_to_buckets_gives_the_same_logits():
    """What a compiled runner does to every pass (rows, tokens and key columns padded to buckets),
    checked on the eager body: the real rows' features do not change, and the padded rows and
    tokens write only past the real rows' tokens."""
    from specgrove.runner import pad_to_buckets

    model = _model("qwen3", seed=3)
    runner = LlamaRunner(model, compile=False)
    slots = runner.new_slots()
    contexts = [[5, 6, 7, 8, 9], [20, 21, 22], [30, 31, 32, 33]]
    for slot, context in enumerate(contexts):
        _pass(runner, slots, [slot], [0], [context], [list(range(len(context)))], [_causal(0, len(context))])
    feeds, starts = [[40, 41, 42], [50], [60, 61]], [5, 3, 4]
    positions = [list(range(s, s + len(f))) for s, f in zip(starts, feeds)]
    masks = [_causal(s, len(f)) for s, f in zip(starts, feeds)]
    real = _pass(runner, slots, [0, 1, 2], starts, feeds, positions, masks)
    ids = torch.zeros(3, 3, dtype=torch.long)
    pos = torch.zeros(3, 3, dtype=torch.long)
    mask = torch.full((3, 1, 3, 8), torch.finfo(torch.float32).min)
    for b, (feed, start, own) in enumerate(zip(feeds, starts, masks)):
        ids[b, : len(feed)], pos[b, : len(feed)] = torch.tensor(feed), torch.tensor(positions[b])
        mask[b, 0, : len(feed), : start + len(feed)] = own
        mask[b, 0, len(feed):, 0] = 0.0
    cols = torch.tensor(starts)[:, None] + torch.arange(3)
    ids, pos, mask, rows, cols = pad_to_buckets(ids, pos, mask, [0, 1, 2], cols)
    assert ids.shape == (4, 4) and mask.shape[-1] == 64 and rows == [0, 1, 2, 0]
    assert cols[3].min() >= 5 + 4  # the padded row writes past row 0's tokens and their padding
    with torch.inference_mode():
        slots.ensure(3, 64)
        hidden = runner.body(ids, pos, mask, slots.keys, slots.values, torch.tensor(rows), cols, False)
    again = runner.logits(hidden[:3, :3].reshape(9, -1)).view(3, 3, -1)
    for b, feed in enumerate(feeds):
        assert (again[b, : len(feed)] - real[b, : len(feed)]).abs().max() < TOLERANCE
