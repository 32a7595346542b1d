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

from orchestrator.planner import CostProfile

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


def measure_draft_level_ms(draft, context: list[int], width: int = 4, repeats: int = 9) -> float:
    from specgrove.models import CachedSequence

    seq = CachedSequence(draft)
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
    from orchestrator.tree_plan import FixedTree
    from orchestrator.acceptance import AcceptanceStats
    from specgrove.sampling import SamplingParams

    shape = SequoiaTable(EXPLORE_PRIOR, max_size=24, max_depth=3).shape(24, 3)
    stats = AcceptanceStats(EXPLORE_PRIOR, prior_weight=1.0)
    engine = SpeculativeEngine(target, drafter, tree=FixedTree(shape, stats))
    for i, ids in enumerate(prompts):
        engine.generate(ids, SamplingParams(temperature=temperature, seed=i, max_new_tokens=max_new_tokens))
    return [round(a, 4) for a in stats.vector()]


def calibrate(target, draft, drafter, num_prompts: int = 4, quick: bool = False) -> CostProfile:
    """Measure everything the planner needs; quick skips the acceptance runs (prior only)."""
    from specgrove.workloads import chat_prompts

    prompts = [target.chat_prompt(p.text) for p in chat_prompts(num_prompts)]
    context = (prompts[0] * 8)[:200]
    verify = measure_verify_ms(target, context, repeats=3 if quick else 5)
    level = measure_draft_level_ms(draft, context)
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


def profile_path(cache_dir: Path, target_name: str, draft_name: str) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return Path(cache_dir) / "profiles" / f"{safe(target_name)}--{safe(draft_name)}.json"
