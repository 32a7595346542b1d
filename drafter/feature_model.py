"""The feature-level draft (EAGLE-style): one llama decoder layer over [the target's feature of
token t; the embedding of token t+1], a final norm, and a reduced LM head (FR-Spec).

Words used throughout (p = target, q = draft):
- a **feature** F_i is the target's last hidden state (after its final norm) at token i: the
  vector its LM head turns into p(x_{i+1} | x_0..x_i);
- a **pair** i is (F_{i-1}, x_i) at position i: the draft reads it and predicts F̂_i, whose head
  gives q(x_{i+1}). Pairs whose F is known come from the target (context); deeper pairs of a
  draft use the draft's own F̂ of their parent (drafted tokens).

A feature-draft directory holds ``feature_draft.json`` (shape, target, vocabulary subset) and
``model.safetensors`` (fc, the layer, the norm and the reduced head, bf16). The token embedding
is the target's own (frozen), borrowed at load time like the distilled draft's.

The layer is written out here (RMSNorm, rotary attention with grouped KV heads, SwiGLU) rather
than borrowed from transformers so that training can run EAGLE-3's training-time test (queries
drafted from the draft's own features attend to keys of true features, by an explicit mask) and
drafting can keep its own small KV cache with tree masks. Its weights have the names of a
transformers ``LlamaDecoderLayer`` and start as a copy of the target's last layer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CONFIG_FILE = "feature_draft.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class FeatureDraftConfig:
    target: str  # the target spec whose features, embeddings and tokenizer the draft uses
    target_vocab_hash: str  # refuses any other tokenizer
    vocab_size: int  # the target's vocabulary (q is returned over all of it)
    hidden_size: int  # H, the target's width
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    vocab_subset: tuple[int, ...]  # ids the head scores, most frequent first (q = 0 elsewhere)

    @classmethod
    def from_target(cls, target_config, target: str, vocab_hash: str, subset: list[int]) -> "FeatureDraftConfig":
        c = target_config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        rope = getattr(c, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
        return cls(target, vocab_hash, int(c.vocab_size), int(c.hidden_size), int(c.num_attention_heads),
                   int(c.num_key_value_heads), int(head_dim), int(c.intermediate_size), float(c.rms_norm_eps),
                   theta, tuple(int(t) for t in subset))

    def to_json(self) -> dict:
        return {**asdict(self), "vocab_subset": list(self.vocab_subset)}

    @classmethod
    def read(cls, path: Path) -> "FeatureDraftConfig":
        raw = json.loads((path / CONFIG_FILE).read_text())
        raw["vocab_subset"] = tuple(int(t) for t in raw["vocab_subset"])
        return cls(**raw)


def is_feature_draft(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., T, head_dim] for llama's rotate-half convention."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv  # [..., T, D/2]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, c: FeatureDraftConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    def project(self, x: torch.Tensor, positions: torch.Tensor):
        """q [B, h, T, D], k and v [B, kvh, T, D] (rotary applied) for x [B, T, H]."""
        b, t, _ = x.shape
        c = self.c
        q = self.q_proj(x).view(b, t, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = rotary(positions, c.head_dim, c.rope_theta)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if cos.ndim == 2:
            cos, sin = cos[None, None], sin[None, None]
        else:
            cos, sin = cos[:, None], sin[:, None]
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def attend(self, q, k, v, mask: torch.Tensor) -> torch.Tensor:
        """q [B, h, T, D] over keys k, v [B, kvh, S, D]; mask [.., T, S] additive float → [B, T, h·D]."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), enable_gqa=True)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: FeatureDraftConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """A llama decoder layer; parameter names match transformers' LlamaDecoderLayer."""

    def __init__(self, c: FeatureDraftConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)


class FeatureDraft(nn.Module):
    def __init__(self, c: FeatureDraftConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = c
        self.embed_tokens = embed_tokens  # the target's, frozen and not saved
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * c.hidden_size, c.hidden_size, bias=True)
        self.layer = DecoderLayer(c)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, len(c.vocab_subset), bias=False)
        self.register_buffer("subset", torch.tensor(c.vocab_subset, dtype=torch.long), persistent=False)

    def inputs(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """fc([F; embedding]) for pairs: features [B, T, H], tokens [B, T] → [B, T, H]."""
        emb = self.embed_tokens(tokens).to(features.dtype)
        return self.fc(torch.cat([features, emb], -1))

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residuals, MLP and the final norm after attention: the predicted features F̂ [B, T, H]."""
        h = x + attn_out
        h = h + self.layer.mlp(self.layer.post_attention_layernorm(h))
        return self.norm(h)

    def forward(
        self,
        features: torch.Tensor,  # [B, T, H] the F of each pair (true or drafted)
        tokens: torch.Tensor,  # [B, T] the token of each pair
        positions: torch.Tensor,  # [T] or [B, T] each pair's position
        past: tuple[torch.Tensor, torch.Tensor] | None,  # (k, v) [B, kvh, S, D] of earlier pairs
        mask: torch.Tensor,  # [B or 1, 1, T, S + T] additive float
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(F̂ [B, T, H], (k, v) of past + these pairs); ``lm_head(F̂)`` gives the subset logits."""
        x = self.inputs(features, tokens)
        attn = self.layer.self_attn
        q, k, v = attn.project(self.layer.input_layernorm(x), positions)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        return self.finish(x, attn.attend(q, k, v, mask)), (k, v)

    def full_logits(self, subset_logits: torch.Tensor) -> torch.Tensor:  # [..., S] → [..., V], −inf outside
        full = subset_logits.new_full((*subset_logits.shape[:-1], self.config.vocab_size), float("-inf"))
        return full.index_copy_(-1, self.subset, subset_logits)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("embed_tokens.")}


def causal_mask(t: int, past: int = 0, device=None) -> torch.Tensor:  # [1, 1, t, past + t]
    allowed = torch.ones(t, past + t, dtype=torch.bool, device=device).tril(past)
    return torch.zeros(t, past + t, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)[None, None]


def ttt_mask(n: int, step: int, device=None) -> torch.Tensor:  # [1, 1, n, step · n]
    """EAGLE-3's training-time-test mask for unrolled draft step ``step`` (1-based) over n pairs.

    Keys are [step-1 pairs | step-2 pairs | … | step-``step`` pairs]. The query at pair j of step s
    stands for the s-th drafted token of a chain whose true context ends at pair j − s + 1: it sees
    the true pairs ≤ j − s + 1 and the chain's own pairs j − s + m of steps m = 2 … s."""
    j = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    blocks = [k <= j - step + 1]
    blocks += [k == j - step + m for m in range(2, step + 1)]
    allowed = torch.cat(blocks, 1)
    return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)[None, None]


def unrolled(model: FeatureDraft, features: torch.Tensor, tokens: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Training-time test: F̂ of each unrolled step over whole sequences, [B, N, H] each.

    features [B, T, H] are the target's F_0..F_{T−1} of tokens [B, T]; pairs are
    (F_{i−1}, x_i) for i = 1..T−1 (N = T − 1 pairs). Step 1 reads true features; step s reads
    step s−1's F̂ of the previous pair (as drafting does) and attends as ``ttt_mask`` says.
    Row j of step s predicts F_{j+1} (valid where j ≥ s − 1)."""
    assert features.ndim == 3 and tokens.shape == features.shape[:2]
    b, t, _ = features.shape
    n = t - 1
    positions = torch.arange(1, t, device=features.device)
    pair_tokens = tokens[:, 1:]
    attn = model.layer.self_attn
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    feats = features[:, :-1]
    for s in range(1, steps + 1):
        if s > 1:  # the previous step's F̂ of the previous pair
            feats = torch.cat([torch.zeros_like(outs[-1][:, :1]), outs[-1][:, :-1]], 1)
        x = model.inputs(feats, pair_tokens)
        q, k, v = attn.project(model.layer.input_layernorm(x), positions)
        keys.append(k)
        values.append(v)
        mask = ttt_mask(n, s, device=features.device)
        outs.append(model.finish(x, attn.attend(q, torch.cat(keys, 2), torch.cat(values, 2), mask)))
    return outs


def init_from_target(c: FeatureDraftConfig, target_model, layer: int = -1) -> FeatureDraft:
    """A fresh draft on the target's embeddings: the layer copies the target's layer ``layer``, the
    norm its final norm, the head the subset rows of its head; fc starts as [0 | I] plus noise
    (reading the token embedding, as the copied layer expects)."""
    model = FeatureDraft(c, target_model.get_input_embeddings())
    source = target_model.model.layers[layer].state_dict()
    missing, unexpected = model.layer.load_state_dict(source, strict=False)
    assert not missing, f"target layer lacks {missing}"
    model.norm.load_state_dict(target_model.model.norm.state_dict())
    with torch.no_grad():
        model.lm_head.weight.copy_(target_model.lm_head.weight[torch.tensor(list(c.vocab_subset))])
        h = c.hidden_size
        model.fc.weight.normal_(0.0, 0.02 / math.sqrt(2))
        model.fc.weight[:, h:] += torch.eye(h)
        model.fc.bias.zero_()
    return model


def load(path: Path, target_model) -> FeatureDraft:
    from specgrove.distilled_draft import load_weights

    c = FeatureDraftConfig.read(path)
    return load_weights(FeatureDraft(c, target_model.get_input_embeddings()), path, borrowed="embed_tokens.")


def save(model: FeatureDraft, path: Path, dtype=torch.bfloat16) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(model.config.to_json()) + "\n")
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
