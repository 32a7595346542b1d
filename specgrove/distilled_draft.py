"""The distilled draft for SmolLM2: a few llama layers plus an LM head over a frequency-ranked
subset of the vocabulary (FR-Spec), reading the target's frozen token embeddings.

A draft directory holds ``config.json`` (a transformers ``LlamaConfig`` for the body),
``draft.json`` (which target it belongs to and the head's vocabulary subset) and
``model.safetensors`` (the layers, final norm and reduced head, bf16). The embedding table is
the target's own (49152 × 576, 113 MB in fp32): shipping a copy would break the 40 MB budget and
it is frozen during training, so the draft borrows it at load time.

Exactness: the head scores only the subset; every other token gets q = 0, so the draft never
proposes it. The verifier uses exactly this q, so the output distribution is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DRAFT_FILE = "draft.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class DraftInfo:
    target: str  # the target model spec whose embeddings and tokenizer the draft uses
    target_vocab_hash: str  # refuses to run against any other tokenizer
    vocab_subset: list[int]  # token ids the head scores, most frequent first

    def to_json(self) -> dict:
        return {"target": self.target, "target_vocab_hash": self.target_vocab_hash,
                "vocab_subset": self.vocab_subset}


def _reduced_head_class():
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class ReducedHeadLM(LlamaForCausalLM):
        """A LlamaForCausalLM whose head scores only the subset; it returns logits over the full
        vocabulary (−inf outside the subset), so ``CausalLM`` and transformers' ``generate`` /
        assisted generation use it like any causal LM."""

        def __init__(self, config, vocab_subset: list[int], embed_tokens: nn.Embedding):
            config.tie_word_embeddings = False  # the head is its own (reduced) matrix
            super().__init__(config)
            self.model.embed_tokens = embed_tokens  # the target's, frozen
            self.model.embed_tokens.weight.requires_grad_(False)
            self.register_buffer("subset", torch.tensor(vocab_subset, dtype=torch.long), persistent=False)
            self.lm_head = nn.Linear(config.hidden_size, len(vocab_subset), bias=False)

        def subset_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., S]
            return self.lm_head(hidden)

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    inputs_embeds=None, use_cache=None, logits_to_keep=0, **kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k not in ("labels", "return_dict", "output_attentions",
                                                                    "output_hidden_states")}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
            hidden = out.last_hidden_state  # [B, T, H]
            if isinstance(logits_to_keep, int) and logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
            small = self.subset_logits(hidden).float()  # [B, T', S]
            full = small.new_full((*small.shape[:-1], self.config.vocab_size), float("-inf"))
            full.index_copy_(-1, self.subset, small)
            return CausalLMOutputWithPast(logits=full, past_key_values=out.past_key_values)

        def trainable_state_dict(self) -> dict[str, torch.Tensor]:
            return {k: v for k, v in self.state_dict().items() if not k.startswith("model.embed_tokens.")}

    return ReducedHeadLM


def read_info(path: Path) -> DraftInfo:
    raw = json.loads((path / DRAFT_FILE).read_text())
    return DraftInfo(raw["target"], raw["target_vocab_hash"], [int(t) for t in raw["vocab_subset"]])


def build(config, info: DraftInfo, embed_tokens: nn.Embedding):
    """A ReducedHeadLM (a transformers LlamaForCausalLM subclass) on the given embeddings."""
    return _reduced_head_class()(config, info.vocab_subset, embed_tokens)


def load(path: Path, target_model):
    """Load a draft directory onto `target_model` (a transformers LlamaForCausalLM) embeddings."""
    from transformers import LlamaConfig

    config = LlamaConfig.from_pretrained(path)
    model = build(config, read_info(path), target_model.get_input_embeddings())
    return load_weights(model, path, borrowed="model.embed_tokens.")


def load_weights(model: torch.nn.Module, path: Path, borrowed: str) -> torch.nn.Module:
    """A draft's own weights (``path``/model.safetensors, read as fp32) into ``model``; only the
    parameters under ``borrowed`` (the target's embeddings) may be missing. Returns it in eval mode."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(path / WEIGHTS_FILE)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(borrowed)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    return model.eval()


def save(model, info: DraftInfo, path: Path, dtype=torch.bfloat16) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    (path / DRAFT_FILE).write_text(json.dumps(info.to_json()) + "\n")
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
