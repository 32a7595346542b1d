"""``specgrove train-draft --kind feature``: train the feature-level (EAGLE-style) draft.

Stages, each resumable from files under the run directory:
1. **generate** and 2. **tokenize**: as for the distilled draft (``training/distill.py``): text the
   target writes (chat answers, code completions), local Python source and package docs, and the
   FR-Spec vocabulary subset (the most frequent ids);
3. **train**: each step the target computes its features F over a batch of windows (no
   gradient); the draft is unrolled ``ttt_steps`` steps (EAGLE-3's training-time test: step s
   reads step s−1's own predicted features) and trained with forward KL(p ‖ q) against the
   target's head on the subset, plus a small smooth-L1 pull of F̂ towards F; AdamW, cosine
   schedule, checkpoints every ``checkpoint_every`` steps (weights, optimiser, step, RNG);
4. **export**: ``feature_model.json`` + bf16 ``model.safetensors`` into the output directory.
A GPU is used when torch sees one (bf16 autocast for the draft; the target's features in fp32).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from drafter import feature_model
from training.distill import _batch, _lr, generate, load_checkpoint, read_config, save_checkpoint, tokenize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureTrainConfig:
    seed: int = 0
    target: str = "smollm2"
    vocab_subset: int = 8192  # FR-Spec head size
    chat_prompts: int = 256  # synthetic chat prompts the target answers
    code_stubs: int = 256  # function headers the target completes
    gen_max_tokens: int = 128
    gen_batch: int = 16
    corpus_tokens: int = 3_000_000  # cap on local source + docs tokens
    generated_fraction: float = 0.5  # share of each batch drawn from the target-written text
    seq_len: int = 256
    batch: int = 8
    steps: int = 1000
    ttt_steps: int = 3  # unrolled draft steps per position (1 = plain teacher forcing)
    ttt_decay: float = 0.8  # loss weight of step s is decay^(s−1)
    feature_loss: float = 0.1  # weight of smooth-L1(F̂, F)
    lr: float = 5e-4
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    threads: int = 2

    @classmethod
    def from_file(cls, path: Path) -> "FeatureTrainConfig":
        return read_config(cls, path)


def run(config: FeatureTrainConfig, run_dir: Path, out_dir: Path, cache_dir: Path,
        max_minutes: float | None = None) -> Path:
    from specgrove.models import load_model

    torch.set_num_threads(config.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    target = load_model(config.target, cache_dir)
    target.model.to("cuda" if torch.cuda.is_available() else "cpu")
    generate(config, target, run_dir)
    subset = tokenize(config, target, run_dir)
    model, stats = train(config, target, subset, run_dir, max_minutes)
    if stats["step"] < config.steps:
        log.warning("stopped at step %d of %d (time limit); run again to resume", stats["step"], config.steps)
        return run_dir
    model.cpu()
    target.model.cpu()
    feature_model.save(model, out_dir)
    (out_dir / "training.json").write_text(json.dumps({"config": asdict(config), **stats}, indent=1) + "\n")
    return out_dir


def draft_loss(model, features: torch.Tensor, tokens: torch.Tensor, head: torch.Tensor,
               config: FeatureTrainConfig) -> tuple[torch.Tensor, list[float]]:
    """Weighted loss over the unrolled steps; also each step's top-1 agreement with the target.

    features [B, T, H] (the target's F of tokens [B, T]), head [S, H] (the target's head rows of
    the subset). Step s, row j predicts F_{j+1}; rows j < s − 1 have no chain and are skipped."""
    target_f = features[:, 1:]  # [B, N, H]
    teacher = torch.log_softmax((target_f @ head.T).float(), -1)  # [B, N, S]
    total = features.new_zeros(())
    agree: list[float] = []
    for s, out in enumerate(feature_model.unrolled(model, features, tokens, config.ttt_steps), start=1):
        rows = slice(s - 1, None)
        student = torch.log_softmax(model.lm_head(out[:, rows]).float(), -1)
        p = teacher[:, rows]
        kl = (p.exp() * (p - student)).sum(-1).mean()
        reg = torch.nn.functional.smooth_l1_loss(out[:, rows].float(), target_f[:, rows].float())
        total = total + config.ttt_decay ** (s - 1) * (kl + config.feature_loss * reg)
        agree.append(float((student.argmax(-1) == p.argmax(-1)).float().mean()))
    return total, agree


def train(config: FeatureTrainConfig, target, subset: list[int], run_dir: Path, max_minutes: float | None):
    from tqdm import tqdm

    streams = [np.load(run_dir / "tokens-generated.npy"), np.load(run_dir / "tokens-corpus.npy")]
    device = target.model.device
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    draft_config = feature_model.FeatureDraftConfig.from_target(target.model.config, config.target,
                                                                target.vocab_hash, subset)
    torch.manual_seed(config.seed)
    model = feature_model.init_from_target(draft_config, target.model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng(config.seed)
    ckpt_path = run_dir / "feature-checkpoint.pt"
    stats = load_checkpoint(ckpt_path, model, opt, rng, device)
    head = target.model.lm_head.weight[torch.tensor(subset, device=device)].detach()  # [S, H]
    body = target.model.model
    started = time.perf_counter()
    wall0 = stats["wall_s"]
    bar = tqdm(total=config.steps, initial=stats["step"], desc="train feature draft", unit="step")
    ema = None
    model.train()
    while stats["step"] < config.steps:
        step = stats["step"]
        ids = _batch(config, streams, rng).to(device)  # [B, T]
        with torch.inference_mode():
            features = body(input_ids=ids).last_hidden_state  # [B, T, H] fp32
        features = features.clone()
        for g in opt.param_groups:
            g["lr"] = _lr(config, step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, agree = draft_loss(model, features, ids, head, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        stats["step"] = step + 1
        stats["tokens"] += ids.numel()
        stats["wall_s"] = wall0 + time.perf_counter() - started
        now = [loss.item(), *agree]
        ema = now if ema is None else [0.95 * e + 0.05 * v for e, v in zip(ema, now)]
        bar.set_postfix(loss=f"{ema[0]:.3f}", top1="/".join(f"{a:.2f}" for a in ema[1:]))
        bar.update(1)
        if stats["step"] % config.checkpoint_every == 0 or stats["step"] == config.steps:
            stats["history"].append({"step": stats["step"], "loss": round(ema[0], 4),
                                     "top1_per_step": [round(a, 4) for a in ema[1:]],
                                     "wall_s": round(stats["wall_s"], 1)})
            save_checkpoint(ckpt_path, model, opt, rng, stats)
            if max_minutes is not None and time.perf_counter() - started > max_minutes * 60:
                break
    bar.close()
    if cuda:
        stats["hardware"] = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    else:
        stats["hardware"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    return model.eval(), stats
