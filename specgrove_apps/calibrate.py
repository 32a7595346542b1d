"""``specgrove calibrate``: measure this machine's costs and the draft's acceptance into a profile.

- verify_ms[n]: median time of one target pass over n new tokens on a ~200-token cached context,
  sizes interleaved in random order over several repetitions;
- draft_level_ms: median time of one draft pass over a 4-node tree level;
- acceptance["greedy"/"sampled"]: the positional acceptance vector measured by generating with
  a wide exploratory tree (8 children at the root) on chat prompts (not the HumanEval workload).
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from pathlib import Path

import torch

from orchestrator.tree_sizing import CostProfile

VERIFY_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
EXPLORE_PRIOR = [0.3, 0.15, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03]


def measure_verify_ms(model, context: list[int], sizes=VERIFY_SIZES, repeats: int = 5, seed: int = 0) -> dict[int, float]:
    from specgrove.models import CachedSequence

    rng = random.Random(seed)
    seq = CachedSequence(model)
    seq.logits_for(context, num_logits=1)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats):
        order = list(sizes)
        rng.shuffle(order)
        for n in order:
            new = [rng.randrange(3, model.vocab_size) for _ in range(n)]
            start = time.perf_counter()
            seq.logits_for(context + new, num_logits=n)
            times[n].append(1000 * (time.perf_counter() - start))
    return {n: round(statistics.median(t), 3) for n, t in times.items()}


def measure_draft_level_ms(draft, context: list[int], width: int = 4, repeats: int = 9, target=None) -> float:
    """Median ms of one draft pass over a ``width``-node tree level (a feature draft reads the
    target's features of the context, which ``target`` computes first)."""
    from drafter.feature_sequence import FeatureDraftModel, primed_sequence
    from specgrove.models import CachedSequence

    seq = primed_sequence(draft, target, context) if isinstance(draft, FeatureDraftModel) else CachedSequence(draft)
    samples = []
    for i in range(repeats):
        seq.logits_for(context, num_logits=1)
        nodes = [(7 * i + j) % (draft.vocab_size - 3) + 3 for j in range(width)]
        start = time.perf_counter()
        seq.tree_logits(context, nodes, [-1] * width, 0, width, with_root=False)
        samples.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(samples), 3)


def measure_acceptance(target, drafter, prompts: list[list[int]], temperature: float, max_new_tokens: int = 48) -> list[float]:
    from orchestrator.engine import SpeculativeEngine
    from orchestrator.sequoia import SequoiaTable
    from orchestrator.acceptance import AcceptanceStats
    from specgrove.sampling import SamplingParams

    shape = SequoiaTable(EXPLORE_PRIOR, max_size=24, max_depth=3).shape(24, 3)
    stats = AcceptanceStats(EXPLORE_PRIOR, prior_weight=1.0)
    engine = SpeculativeEngine(target, drafter, tree=shape, acceptance=stats)  # every verdict feeds stats
    for i, ids in enumerate(prompts):
        engine.generate(ids, SamplingParams(temperature=temperature, seed=i, max_new_tokens=max_new_tokens))
    return [round(a, 4) for a in stats.vector()]


def calibrate(target, draft, drafter, num_prompts: int = 4, quick: bool = False) -> CostProfile:
    """Measure everything the planner needs; quick skips the acceptance runs (prior only)."""
    from specgrove.workloads import chat_prompts

    prompts = [target.chat_prompt(p.text) for p in chat_prompts(num_prompts)]
    context = (prompts[0] * 8)[:200]
    verify = measure_verify_ms(target, context, repeats=3 if quick else 5)
    level = measure_draft_level_ms(draft, context, target=target)
    acceptance = {"greedy": EXPLORE_PRIOR, "sampled": EXPLORE_PRIOR}
    if not quick:
        acceptance = {
            "greedy": measure_acceptance(target, drafter, prompts, temperature=0.0),
            "sampled": measure_acceptance(target, drafter, prompts, temperature=1.0),
        }
    meta = {
        "target": target.name, "draft": draft.name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "quick": quick,
    }
    return CostProfile(verify, level, 0.0, acceptance, meta)


# Bumped when the passes' costs change for a reason a stored profile cannot know (the runner).
PROFILE_VERSION = 2


def profile_path(cache_dir: Path, target_name: str, draft_name: str) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return Path(cache_dir) / "profiles" / f"{safe(target_name)}--{safe(draft_name)}--v{PROFILE_VERSION}.json"


# Model shapes for cost curves without weights (a GPU host where the real weights cannot travel):
# random weights of a real architecture cost what the trained ones do.
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


def measure_shape_ms(shape: str, device: str = "cuda", dtype=torch.bfloat16, sizes=(1, 2, 4, 8, 16, 32, 64, 128),
                     batches=(1, 4, 16), prefix: int = 256, repeats: int = 7) -> dict:
    """Median ms of transformers' forward over n new tokens per row for a batch of B rows, each on
    a ``prefix``-token cache, for a random-weight model of a named shape: {B: {n: ms}}."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return measure_model_ms(model, sizes, batches, prefix, repeats)


def measure_model_ms(model, sizes, batches, prefix: int, repeats: int) -> dict:
    """``measure_shape_ms`` for a loaded transformers model (the reference the runner is compared to)."""
    from transformers import DynamicCache

    config, device = model.config, model.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out: dict = {}
    with torch.inference_mode():
        for b in batches:
            ids = torch.randint(3, config.vocab_size, (b, prefix), device=device)
            out[b] = {}
            for n in sizes:
                samples = []
                for r in range(repeats + 2):
                    cache = DynamicCache(config=config)
                    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    new = torch.randint(3, config.vocab_size, (b, n), device=device)
                    pos = torch.arange(prefix, prefix + n, device=device).expand(b, n)
                    sync()
                    start = time.perf_counter()
                    model(input_ids=new, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=n)
                    sync()
                    if r >= 2:  # two warm-ups
                        samples.append(1000 * (time.perf_counter() - start))
                out[b][n] = round(statistics.median(samples), 3)
    return out
