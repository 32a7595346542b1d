"""``specgrove train-draft``: distil the target into a small reduced-head draft, reproducibly.

Stages, each resumable from files under the run directory:
1. **generate**: the target writes answers to synthetic chat prompts and completes function
   headers taken from local source (``generated.jsonl``, appended batch by batch);
2. **tokenize**: that text plus local Python source and package docs become two token streams
   (``tokens-generated.npy``, ``tokens-corpus.npy``), and the head's vocabulary subset is the
   most frequent ids of both (FR-Spec);
3. **train**: forward KL(p ‖ q) against the target's logits on the subset, AdamW, checkpoints
   every ``checkpoint_every`` steps (``checkpoint.pt``: weights, optimiser, step, RNG);
4. **export**: bf16 safetensors + ``draft.json`` + ``config.json`` into the output directory.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from training import corpus
from specgrove.distilled_draft import DraftInfo, build, save

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    target: str = "smollm2"
    init_layers: list[int] = field(default_factory=lambda: [0, 1, 29])  # target layers copied into the draft
    vocab_subset: int = 8192  # FR-Spec head size (most frequent ids of the training text)
    chat_prompts: int = 256  # synthetic chat prompts the target answers
    code_stubs: int = 256  # function headers the target completes
    gen_max_tokens: int = 128
    gen_batch: int = 16
    corpus_tokens: int = 3_000_000  # cap on local source + docs tokens
    generated_fraction: float = 0.5  # share of each batch drawn from the target-written text
    seq_len: int = 256
    batch: int = 4
    steps: int = 1200
    lr: float = 5e-4
    warmup: int = 30
    min_lr_ratio: float = 0.1
    checkpoint_every: int = 25
    threads: int = 2

    @classmethod
    def from_file(cls, path: Path) -> "TrainConfig":
        return read_config(cls, path)


def read_config(cls, path: Path):
    """A training-config dataclass from a JSON file; unknown keys are an error."""
    raw = json.loads(Path(path).read_text())
    unknown = set(raw) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    return cls(**raw)


def load_checkpoint(path: Path, model, opt, rng: np.random.Generator, device) -> dict:
    """Restore weights, optimiser and RNG from ``path`` when it exists; return the run's stats."""
    if not path.exists():
        return {"step": 0, "wall_s": 0.0, "tokens": 0, "history": []}
    ckpt = torch.load(path, weights_only=False, map_location=device)
    model.load_state_dict(ckpt["model"], strict=False)
    opt.load_state_dict(ckpt["opt"])
    rng.bit_generator.state = ckpt["rng"]
    return ckpt["stats"]


def save_checkpoint(path: Path, model, opt, rng: np.random.Generator, stats: dict) -> None:
    """Atomically write the trainable weights, optimiser, RNG and stats."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.trainable_state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                "stats": stats}, tmp)
    tmp.replace(path)


def run(config: TrainConfig, run_dir: Path, out_dir: Path, cache_dir: Path, max_minutes: float | None = None) -> Path:
    from specgrove.models import load_model

    torch.set_num_threads(config.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    target = load_model(config.target, cache_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU when one is at hand
    target.model.to(device)
    generate(config, target, run_dir)
    subset = tokenize(config, target, run_dir)
    model, stats = train(config, target, subset, run_dir, max_minutes)
    model.cpu()
    target.model.cpu()
    if stats["step"] < config.steps:
        log.warning("stopped at step %d of %d (time limit); run again to resume", stats["step"], config.steps)
        return run_dir
    info = DraftInfo(config.target, target.vocab_hash, subset)
    save(model, info, out_dir)
    (out_dir / "training.json").write_text(json.dumps({"config": asdict(config), **stats}, indent=1) + "\n")
    return out_dir


# ---------------------------------------------------------------- 1. target-written text

def generate(config: TrainConfig, target, run_dir: Path) -> None:
    from tqdm import tqdm

    path = run_dir / "generated.jsonl"
    rng = random.Random(config.seed)
    chats = corpus.chat_prompts(config.chat_prompts, rng, corpus.held_out_prompts())
    stubs = corpus.code_stubs(corpus.source_files(random.Random(config.seed + 1)), config.code_stubs, rng)
    jobs = [("chat", c) for c in chats] + [("code", s) for s in stubs]
    done = len(path.read_text().splitlines()) if path.exists() else 0
    if done >= len(jobs):
        return
    tok = target.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bar = tqdm(total=len(jobs), initial=done, desc="target writes", unit="text")
    with path.open("a") as f:
        for start in range(done, len(jobs), config.gen_batch):
            batch = jobs[start: start + config.gen_batch]
            prompts = [tok.decode(target.chat_prompt(text)) if kind == "chat" else text for kind, text in batch]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(target.model.device)
            sampled = (start // config.gen_batch) % 2 == 1  # alternate greedy and T=0.8 batches
            torch.manual_seed(config.seed + start)
            with torch.inference_mode():
                out = target.model.generate(
                    **enc, max_new_tokens=config.gen_max_tokens, do_sample=sampled, temperature=0.8 if sampled else None,
                    top_k=0 if sampled else None, top_p=None, pad_token_id=tok.pad_token_id or 2,
                )
            for (kind, _), prompt, row in zip(batch, prompts, out):
                completion = tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=False)
                completion = completion.replace(tok.pad_token or "<|endoftext|>", "")
                f.write(json.dumps({"kind": kind, "text": prompt + completion}) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()


# ---------------------------------------------------------------- 2. token streams + FR-Spec subset

def tokenize(config: TrainConfig, target, run_dir: Path) -> list[int]:
    gen_path, corpus_path, subset_path = (run_dir / n for n in ("tokens-generated.npy", "tokens-corpus.npy", "subset.json"))
    if subset_path.exists():
        return json.loads(subset_path.read_text())
    eos = next(iter(sorted(target.eos_token_ids)))
    tok = target.tokenizer
    gen: list[int] = []
    for line in (run_dir / "generated.jsonl").read_text().splitlines():
        gen += tok.encode(json.loads(line)["text"], add_special_tokens=False) + [eos]
    rng = random.Random(config.seed + 2)
    docs = corpus.doc_files(rng)
    code = corpus.source_files(rng)
    stream: list[int] = []
    files = [p for pair in zip(code, docs + code[len(docs):]) for p in pair]  # interleave code and docs
    for path in files:
        text = corpus.read_text(path, 20_000)
        if text.strip():
            stream += tok.encode(text, add_special_tokens=False) + [eos]
        if len(stream) >= config.corpus_tokens:
            break
    np.save(gen_path, np.asarray(gen, dtype=np.int32))
    np.save(corpus_path, np.asarray(stream, dtype=np.int32))
    counts = np.bincount(np.asarray(gen + stream), minlength=target.vocab_size)
    counts[list(target.eos_token_ids)] += counts.max() + 1  # end tokens always in the head
    subset = [int(t) for t in np.argsort(-counts, kind="stable")[: config.vocab_subset]]
    subset_path.write_text(json.dumps(subset) + "\n")
    covered = counts[subset].sum() / counts.sum()
    log.info("tokens: generated %d, corpus %d; subset %d covers %.4f of training tokens",
             len(gen), len(stream), len(subset), covered)
    return subset


# ---------------------------------------------------------------- 3. distillation

def init_draft(config: TrainConfig, target, subset: list[int]):
    """Copy the chosen target layers, final norm and the subset rows of its (tied) head."""
    from transformers import LlamaConfig

    tmodel = target.model
    cfg = LlamaConfig(**{**tmodel.config.to_dict(), "num_hidden_layers": len(config.init_layers)})
    cfg.architectures = ["LlamaModel"]
    model = build(cfg, DraftInfo(config.target, target.vocab_hash, subset), tmodel.get_input_embeddings())
    for i, src in enumerate(config.init_layers):
        model.model.layers[i].load_state_dict(tmodel.model.layers[src].state_dict())
    model.model.norm.load_state_dict(tmodel.model.norm.state_dict())
    with torch.no_grad():
        model.lm_head.weight.copy_(tmodel.lm_head.weight[torch.tensor(subset)])
    return model


def _batch(config: TrainConfig, streams: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
    rows = []
    for i in range(config.batch):
        data = streams[0] if i < round(config.batch * config.generated_fraction) else streams[1]
        start = int(rng.integers(0, len(data) - config.seq_len))
        rows.append(torch.from_numpy(data[start: start + config.seq_len].astype(np.int64)))
    return torch.stack(rows)  # [B, T]


def _lr(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward KL(p ‖ q) per token, both [N, S] over the subset; also top-1 agreement."""
    logp = torch.log_softmax(teacher_logits.float(), -1)
    logq = torch.log_softmax(student_logits.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean()
    agree = (teacher_logits.argmax(-1) == student_logits.argmax(-1)).float().mean()
    return kl, agree


def train(config: TrainConfig, target, subset: list[int], run_dir: Path, max_minutes: float | None):
    from tqdm import tqdm

    streams = [np.load(run_dir / "tokens-generated.npy"), np.load(run_dir / "tokens-corpus.npy")]
    device = target.model.device
    model = init_draft(config, target, subset).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.98))
    rng = np.random.default_rng(config.seed)
    ckpt_path = run_dir / "checkpoint.pt"
    stats = load_checkpoint(ckpt_path, model, opt, rng, device)
    head = target.model.lm_head.weight[torch.tensor(subset)].detach()  # [S, H]
    body = target.model.model
    started = time.perf_counter()
    wall0 = stats["wall_s"]
    bar = tqdm(total=config.steps, initial=stats["step"], desc="distil", unit="step")
    ema = None
    model.train()
    while stats["step"] < config.steps:
        step = stats["step"]
        ids = _batch(config, streams, rng).to(device)  # [B, T]
        with torch.inference_mode():
            teacher = body(input_ids=ids).last_hidden_state @ head.T  # [B, T, S]
        teacher = teacher.clone()
        for g in opt.param_groups:
            g["lr"] = _lr(config, step)
        hidden = model.model(input_ids=ids).last_hidden_state  # [B, T, H]
        student = model.subset_logits(hidden)  # [B, T, S]
        loss, agree = distill_loss(student.flatten(0, 1), teacher.flatten(0, 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        stats["step"] = step + 1
        stats["tokens"] += ids.numel()
        stats["wall_s"] = wall0 + time.perf_counter() - started
        ema = (loss.item(), agree.item()) if ema is None else (0.9 * ema[0] + 0.1 * loss.item(), 0.9 * ema[1] + 0.1 * agree.item())
        bar.set_postfix(kl=f"{ema[0]:.3f}", top1=f"{ema[1]:.3f}")
        bar.update(1)
        if stats["step"] % config.checkpoint_every == 0 or stats["step"] == config.steps:
            stats["history"].append({"step": stats["step"], "kl": round(ema[0], 4), "top1": round(ema[1], 4),
                                     "wall_s": round(stats["wall_s"], 1)})
            save_checkpoint(ckpt_path, model, opt, rng, stats)
            if max_minutes is not None and time.perf_counter() - started > max_minutes * 60:
                break
    bar.close()
    if device.type == "cuda":
        stats["hardware"] = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    else:
        stats["hardware"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    return model.eval(), stats
