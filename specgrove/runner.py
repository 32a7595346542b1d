"""Our own forward pass for the Llama family (SmolLM2, Llama 3, Qwen2/2.5, Qwen3), on KV slots.

transformers' forward spends most of a small pass in Python and small kernels: on a 2-core CPU a
1-token SmolLM2 pass costs well over twice the time its weights take to stream, and on an H100 a
pass costs the same at every size, bound by kernel launches rather than by its weight reads. This
runner does the same arithmetic with a handful of tensor operations per layer, over keys and values
that live in preallocated **slots**, so the pass can be compiled (``torch.compile``; on the CPU with
inductor's own small-M GEMM kernels, on a GPU with CUDA graphs per shape bucket) and the eager path
is already lean.

One pass: B rows, each feeding up to T new tokens (right-padded) at its own positions. Row b
writes its new keys into its slot at positions cols[b] (its cached length onwards), then attends
over its slot's first L positions with one fused attention call (``scaled_dot_product_attention``
with grouped KV heads). The additive float mask [B, 1, T, L] is in slot coordinates: what each
query sees of the slot (its cached prefix, then its own new tokens: causal for a context tail,
ancestors for tree nodes). A pass is about 20 tensor operations per layer: on a 2-core CPU a
SmolLM2 layer's operations cost less than its weights' streaming, and on a GPU a whole pass is
one CUDA graph.

transformers stays the reference: the tests compare this pass with its forward.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")
INITIAL_CAPACITY = 256  # positions per slot; doubled (one copy) when a row needs more
COMPILE_MAX_TOKENS = 256  # passes over more rows × tokens than this (prefills) run eager
# On the CPU, inductor's C++ GEMM template streams each weight once for a few rows, where the
# BLAS's small-M path costs nearly linearly in the rows; it needs frozen (constant) weights.
CPU_COMPILE_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def compile_default(device: torch.device) -> bool:
    """SPECGROVE_COMPILE=1 or 0 decides; by default passes are compiled on a GPU (CUDA graphs) and
    eager on the CPU, where prepacked oneDNN weights already give a flat cost up to ~8 rows and a
    compile takes minutes on a small machine."""
    value = os.environ.get("SPECGROVE_COMPILE")
    if value is None:
        return device.type == "cuda"
    return value not in ("0", "false", "no", "")


def supports(hf_model) -> bool:
    """Whether the runner can run this transformers model (a Llama-family decoder with its head)."""
    config = getattr(hf_model, "config", None)
    body = getattr(hf_model, "model", None)
    return (getattr(config, "model_type", None) in SUPPORTED and body is not None
            and hasattr(body, "layers") and hasattr(body, "rotary_emb") and hasattr(body, "norm"))


class KVSlots:
    """Keys and values of many sequences, a slot each: two tensors [layers, slots, kv_heads,
    capacity, head_dim]. Slots and capacity grow by doubling (one copy), so memory follows the
    high-water mark; ``reset`` gives it back. A sequence's length is its owner's bookkeeping:
    dropping rejected tokens is moving that length back, nothing is copied."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device,
                 capacity: int = INITIAL_CAPACITY, max_capacity: int | None = None):
        self.layers, self.kv_heads, self.head_dim, self.dtype, self.device = layers, kv_heads, head_dim, dtype, device
        self.initial = capacity
        self.max_capacity = max_capacity
        self.keys = self.values = None
        self.slots = self.capacity = 0

    def ensure(self, slots: int, need: int) -> None:
        """Room for slot indices < slots and positions < need."""
        if self.keys is None:
            self.slots, self.capacity = max(slots, 1), max(need, self.initial)
            shape = (self.layers, self.slots, self.kv_heads, self.capacity, self.head_dim)
            self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
            return
        if slots <= self.slots and need <= self.capacity:
            return
        new_slots = self.slots if slots <= self.slots else max(slots, 2 * self.slots)
        new_capacity = self.capacity if need <= self.capacity else max(need, 2 * self.capacity)
        if self.max_capacity:  # doubling stops at the model's length (a longer context still fits)
            new_capacity = max(need, self.capacity, min(new_capacity, self.max_capacity))
        shape = (self.layers, new_slots, self.kv_heads, new_capacity, self.head_dim)
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_zeros(shape)
            grown[:, : old.shape[1], :, : old.shape[3]] = old
            setattr(self, name, grown)
        self.slots, self.capacity = new_slots, new_capacity

    @torch.inference_mode()
    def move(self, slot: int, sources: list[int], destinations: list[int]) -> None:
        """Within a slot, copy the KV at positions ``sources`` to ``destinations`` (a tree path)."""
        src = torch.tensor(sources, dtype=torch.long, device=self.device)
        dst = torch.tensor(destinations, dtype=torch.long, device=self.device)
        for tensor in (self.keys, self.values):
            row = tensor[:, slot]  # [L, h, cap, d]
            row.index_copy_(2, dst, row.index_select(2, src))

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else 2 * self.keys.numel() * self.keys.element_size()

    def reset(self) -> None:
        self.keys = self.values = None
        self.slots = self.capacity = 0


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused kernel; the same arithmetic as transformers' in fp32
        return torch.rms_norm(x, (x.shape[-1],), weight, eps)
    dtype = x.dtype  # transformers normalises half precision in fp32
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Dense:
    """y = x Wᵀ (+ b) for one or more stacked weights (q|k|v, gate|up), split back into parts.

    On the CPU the stacked weight is reordered once into oneDNN's blocked layout: packed, SmolLM2's
    matrices for one pass cost about the same for 1 to 8 rows and less than through MKL's sgemm
    (``F.linear``), whose small-M path costs almost linearly in the rows on the project's 2-core
    AMD CPU (docs/benchmarks.md, "The runner"). Elsewhere (a GPU, or a compiled pass) it is
    ``F.linear`` on the model's own weights, which are then not copied."""

    def __init__(self, linears: list[nn.Linear], packed: bool):
        self.linears = linears
        self.sizes = [int(lin.weight.shape[0]) for lin in linears]
        self.packed = None
        if packed:
            with torch.no_grad():
                weight = torch.cat([lin.weight for lin in linears]) if len(linears) > 1 else linears[0].weight
                biases = [lin.bias for lin in linears]
                self.bias = None if all(b is None for b in biases) else torch.cat(
                    [b if b is not None else weight.new_zeros(n) for b, n in zip(biases, self.sizes)])
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[..., Σ sizes]: the parts side by side (one product when packed)."""
        if self.packed is None:
            parts = [lin(x) for lin in self.linears]
            return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


class _Layer(nn.Module):
    """One decoder layer's weights, shared with the transformers module (packed copies on the CPU)."""

    def __init__(self, layer, packed: bool):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.gate, self.up, self.down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.in_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm = getattr(attn, "q_norm", None)  # Qwen3
        self.k_norm = getattr(attn, "k_norm", None)
        self.qkv_dense = Dense([self.q, self.k, self.v], packed)
        self.o_dense = Dense([self.o], packed)
        self.gate_up_dense = Dense([self.gate, self.up], packed)
        self.down_dense = Dense([self.down], packed)


class Body(nn.Module):
    """The decoder body as one function of tensors (what gets compiled or captured): see
    ``forward``; it returns the features [B, T, H] after the final norm and writes the pass's
    keys and values into the slots."""

    def __init__(self, hf_model, max_len: int, packed: bool):
        super().__init__()
        config = hf_model.config
        body = hf_model.model
        self.embed = body.embed_tokens
        self.layers = nn.ModuleList(_Layer(layer, packed) for layer in body.layers)
        self.norm = body.norm
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.rotary = body.rotary_emb
        self.positions = 0
        self.extend(max_len)

    def extend(self, length: int) -> None:
        """Rotary tables (cos, sin [positions, head_dim]) for positions < length; any rope type,
        its scaling applied (transformers' own rotary module computes them)."""
        if length <= self.positions:
            return
        weight = self.embed.weight
        with torch.no_grad():
            probe = torch.zeros(1, 1, self.head_dim, device=weight.device, dtype=weight.dtype)
            cos, sin = self.rotary(probe, torch.arange(length, device=weight.device)[None])
        self.register_buffer("cos", cos[0].to(weight.dtype), persistent=False)
        self.register_buffer("sin", sin[0].to(weight.dtype), persistent=False)
        self.positions = length

    def forward(self, ids, positions, mask, keys, values, rows, cols, contiguous: bool):
        """ids, positions, cols [B, T]; mask [B, 1, T, L]; keys, values [layers, slots, h, cap, d]
        (written in place); rows [B]; contiguous: rows are slots 0..B−1 (read as a view)."""
        B, T = ids.shape
        L = mask.shape[-1]
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        x = F.embedding(ids, self.embed.weight)
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]  # [B, T, 1, d]
        write = (rows[:, None].expand(B, T), slice(None), cols)  # [B, T] slots and positions
        for i, layer in enumerate(self.layers):
            h = _rms(x, layer.in_norm.weight, self.eps)
            qkv = layer.qkv_dense(h).view(B, T, heads + 2 * kv, d)
            if layer.q_norm is None:  # rotate q and k together
                qk = _rotate(qkv[:, :, : heads + kv], cos, sin)
                q, k = qk[:, :, :heads], qk[:, :, heads:]
            else:  # Qwen3 normalises each head first
                q = _rotate(_rms(qkv[:, :, :heads], layer.q_norm.weight, self.eps), cos, sin)
                k = _rotate(_rms(qkv[:, :, heads: heads + kv], layer.k_norm.weight, self.eps), cos, sin)
            keys[i][write] = k
            values[i][write] = qkv[:, :, heads + kv:]
            if contiguous:
                cached_k, cached_v = keys[i, :B, :, :L], values[i, :B, :, :L]
            else:
                cached_k = keys[i, :, :, :L].index_select(0, rows)
                cached_v = values[i, :, :, :L].index_select(0, rows)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), cached_k, cached_v, attn_mask=mask,
                                                 enable_gqa=heads != kv)
            x = x + layer.o_dense(out.transpose(1, 2).reshape(B, T, heads * d))
            h = _rms(x, layer.post_norm.weight, self.eps)
            gate_up = layer.gate_up_dense(h)
            inner = gate_up.shape[-1] // 2
            x = x + layer.down_dense(F.silu(gate_up[..., :inner]) * gate_up[..., inner:])
        return _rms(x, self.norm.weight, self.eps)


class Head(nn.Module):
    """features [N, H] -> logits [N, V] fp32 (a reduced-head draft: −inf outside its subset)."""

    def __init__(self, hf_model, packed: bool = False):
        super().__init__()
        self.model = hf_model
        self.dense = Dense([hf_model.lm_head], packed)

    def forward(self, hidden):
        logits = self.dense(hidden).float()
        if hasattr(self.model, "subset_logits"):  # the head scored the subset only
            full = logits.new_full((*logits.shape[:-1], self.model.config.vocab_size), float("-inf"))
            return full.index_copy(-1, self.model.subset, logits)
        return logits


class LlamaRunner:
    """Passes of one Llama-family model over ``KVSlots``; compiled or eager (see the module
    docstring). ``pass_`` is the one entry point: every verifier, drafter and bench pass goes here."""

    def __init__(self, hf_model, compile: bool | None = None, max_len: int | None = None,
                 packed: bool | None = None):
        config = hf_model.config
        self.max_len = int(max_len or min(int(getattr(config, "max_position_embeddings", 2048)), 16384))
        weight = hf_model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.compile = compile_default(self.device) if compile is None else compile
        self.packed = can_pack(self.device, self.dtype) and not self.compile if packed is None else packed
        self.body = Body(hf_model, self.max_len, self.packed).eval()
        self.head = Head(hf_model, self.packed).eval()
        self._body_compiled = self._head_compiled = None
        self.compile_seconds = 0.0

    def new_slots(self, capacity: int = INITIAL_CAPACITY) -> KVSlots:
        return KVSlots(len(self.body.layers), self.body.kv_heads, self.body.head_dim, self.dtype, self.device,
                       capacity=min(capacity, self.max_len), max_capacity=self.max_len)

    @torch.inference_mode()
    def pass_(self, slots: KVSlots, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
              rows: list[int], starts: list[int]) -> torch.Tensor:
        """One pass (see the module docstring): row b is slot rows[b], its new tokens go to
        positions starts[b] onwards, mask [B, 1, T, L] is in slot coordinates (L ≥ starts[b] + its
        tokens). Writes the new keys and returns features [B, T, H]."""
        B, T = ids.shape
        last = int(positions.max()) + 1
        if last > self.body.positions:  # past the configured length (transformers extends rope too)
            self.body.extend(max(last, 2 * self.body.positions))
        cols = torch.tensor(starts)[:, None] + torch.arange(T)
        if self.compile and B * T <= COMPILE_MAX_TOKENS:  # a static shape per bucket: one graph each
            ids, positions, mask, rows, cols = pad_to_buckets(ids, positions, mask, rows, cols)
            body = self._body()
        else:
            body = self.body
        slots.ensure(max(rows) + 1, max(int(cols.max()) + 1, mask.shape[-1]))
        device = self.device
        contiguous = rows == list(range(len(rows)))
        hidden = body(ids.to(device), positions.to(device), mask.to(device, self.dtype), slots.keys, slots.values,
                      torch.tensor(rows, device=device), cols.to(device), contiguous)
        return hidden[:B, :T]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """features [N, H] -> logits [N, V] fp32 on the CPU."""
        n = len(hidden)
        if not self.compile or n > COMPILE_MAX_TOKENS:
            return self.head(hidden).cpu()
        padded = key_bucket(n, smallest=1)  # a static shape per bucket
        if padded != n:
            hidden = torch.cat([hidden, hidden.new_zeros(padded - n, hidden.shape[-1])])
        return self._head()(hidden)[:n].cpu()

    def _body(self):
        if self._body_compiled is None:
            self._body_compiled = self._compiled(self.body)
        return self._body_compiled

    def _head(self):
        if self._head_compiled is None:
            self._head_compiled = self._compiled(self.head)
        return self._head_compiled

    def _compiled(self, module):
        if self.device.type == "cuda":  # the eager kernels, captured once per bucket and replayed
            return CudaGraphs(module, self, persistent=(3, 4) if module is self.body else ())
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)  # one per bucket
        # inductor reads freezing from its global config, not from compile's options
        return _Timed(torch.compile(module, dynamic=False), self, CPU_COMPILE_OPTIONS)

    @torch.inference_mode()
    def warm_up(self, shapes=((1, 1), (1, 4)), context: int = 8, slots: KVSlots | None = None,
                progress: bool = False) -> float:
        """Compile (or capture) the passes for (rows, tokens) shapes on ``slots`` now, not on a
        request's clock (a CUDA graph belongs to the slots it read). Returns the seconds it took.
        What it writes lies past every slot's length (a session's tokens overwrite it)."""
        if not self.compile:
            return 0.0
        from tqdm import tqdm

        start = time.perf_counter()
        slots = slots or self.new_slots()
        for rows, tokens in tqdm(shapes, desc="capturing passes", unit="shape", disable=not progress):
            ids = torch.zeros(rows, tokens, dtype=torch.long)
            positions = torch.arange(context, context + tokens).expand(rows, tokens)
            mask = torch.zeros(rows, 1, tokens, context + tokens)  # the slot's first context positions, all tokens
            hidden = self.pass_(slots, ids, positions, mask, list(range(rows)), [context] * rows)
            self.logits(hidden.reshape(-1, hidden.shape[-1]))
        return time.perf_counter() - start


ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MIN_KEY_BUCKET = 64  # cached columns are padded to a power of two from here


def bucket(n: int, sizes: tuple[int, ...]) -> int:
    return next((size for size in sizes if size >= n), n)


def key_bucket(n: int, smallest: int = MIN_KEY_BUCKET) -> int:
    """The power of two ≥ n, from ``smallest``."""
    size = smallest
    while size < n:
        size *= 2
    return size


def pad_to_buckets(ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, rows: list[int],
                   cols: torch.Tensor):
    """Pad a pass to bucket shapes: rows and tokens to the next bucket, key columns to a power of
    two. Padded queries see column 0 only; padded key columns are blocked. A real row's padded
    tokens are written past its own (so never read); a padded row reads the first row's slot and
    writes past that row's tokens and padding."""
    B, T = ids.shape
    L = mask.shape[-1]
    Bp, Tp = bucket(B, ROW_BUCKETS), bucket(T, TOKEN_BUCKETS)
    Lp = key_bucket(max(L, int(cols[0, 0]) + 2 * Tp if Bp > B else L))
    if (Bp, Tp, Lp) == (B, T, L):
        return ids, positions, mask, rows, cols
    padded_ids = ids.new_zeros(Bp, Tp)
    padded_ids[:B, :T] = ids
    padded_positions = positions.new_zeros(Bp, Tp)
    padded_positions[:B, :T] = positions
    padded_positions[:B, T:] = positions[:, -1:]
    padded_positions[B:] = positions[0, -1]
    padded_mask = mask.new_full((Bp, 1, Tp, Lp), torch.finfo(torch.float32).min)
    padded_mask[:B, :, :T, :L] = mask
    padded_mask[:B, :, T:, 0] = 0.0
    padded_mask[B:, :, :, 0] = 0.0
    start = cols[:, :1]
    padded_cols = torch.cat([start + torch.arange(Tp), (cols[0, 0] + Tp + torch.arange(Tp)).expand(Bp - B, Tp)])
    return padded_ids, padded_positions, padded_mask, rows + [rows[0]] * (Bp - B), padded_cols


class CudaGraphs:
    """A module's passes as CUDA graphs, one per input shape (the runner pads passes to buckets),
    as vLLM and SGLang capture their decode shapes: a replay launches the whole pass at once.
    Arguments at ``persistent`` (the KV slots) are read in place, so a graph belongs to those
    tensors (slots that grew get new graphs); the others are copied into the graph's own inputs.
    The outputs are the graph's buffers, valid until its next replay."""

    def __init__(self, module, runner: LlamaRunner, persistent: tuple[int, ...] = ()):
        self.module, self.runner, self.persistent = module, runner, persistent
        self.graphs: dict = {}
        self.pointers: tuple = ()
        self.pool = None

    def __call__(self, *args):
        pointers = tuple(args[i].data_ptr() for i in self.persistent)
        if pointers != self.pointers:  # the slots grew: the old graphs read freed memory
            self.graphs.clear()
            self.pointers = pointers
        key = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args)
        entry = self.graphs.get(key)
        if entry is None:
            start = time.perf_counter()
            entry = self.graphs[key] = self._capture(args)
            self.runner.compile_seconds += time.perf_counter() - start
        inputs, graph, out = entry
        for i, (buffer, arg) in enumerate(zip(inputs, args)):
            if i not in self.persistent and isinstance(arg, torch.Tensor):
                buffer.copy_(arg)
        graph.replay()
        return out

    def _capture(self, args):
        inputs = [arg.clone() if i not in self.persistent and isinstance(arg, torch.Tensor) else arg
                  for i, arg in enumerate(args)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # allocator and kernels warmed before capture
            for _ in range(2):
                self.module(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.module(*inputs)
        self.pool = graph.pool()
        return inputs, graph, out


class _Timed:
    """A compiled module that adds the time of calls that compiled something to the runner's count."""

    def __init__(self, compiled, runner: LlamaRunner, config: dict):
        self.compiled, self.runner, self.config = compiled, runner, config

    def __call__(self, *args):
        from torch._inductor import config

        before = _compile_count()
        start = time.perf_counter()
        with config.patch(self.config):
            out = self.compiled(*args)
        if _compile_count() != before:
            seconds = time.perf_counter() - start
            self.runner.compile_seconds += seconds
            log.info("compiled a pass for shapes %s in %.1f s", [tuple(a.shape) for a in args[:1]], seconds)
        return out


def _compile_count() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return 0
    return int(sum(counters["stats"].values()))
