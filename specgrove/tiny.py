"""Tiny random llama models with a tiny character tokenizer, for fast unit tests only.

They go through exactly the code path of real models (a Hugging Face directory with
config.json, safetensors and tokenizer.json), so tests exercise loading and detokenising too.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1 (bos), 2 (eos), as in SmolLM2
LOWER = list(string.ascii_lowercase + " .,")  # 29 characters -> vocabulary of 32
UPPER = list(string.ascii_uppercase + " .,")  # a different vocabulary of the same size
CHAT_TEMPLATE = (  # ChatML, as SmolLM2 uses
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def build_tiny_llama(
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,  # model width
    num_layers: int = 2,  # decoder layers
    characters: list[str] = LOWER,  # one token per character, after the special tokens
    logit_scale: float = 1.0,  # multiplies the LM head: larger = peakier distributions
    suppress_eos: bool = False,  # zero the EOS row of the head: greedy runs to max_new_tokens
) -> Path:
    """Write a random LlamaForCausalLM and a character-level tokenizer to out_dir."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + list(characters))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
        if suppress_eos:
            model.lm_head.weight[config.eos_token_id] = 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
