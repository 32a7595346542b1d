"""Where a round's time goes: ``python -m specgrove_apps.profile_round`` (see --help).

Each mode generates the workload's prompts once for warm-up, then again measured. The round's
parts are timed from outside, by wrapping the functions that do them (whichever exist in this
version of the code, so an older checkout can be profiled the same way):

- ``target_forward``: the target model's forward passes;
- ``draft_forward``: the draft model's forward passes (zero for prompt lookup);
- ``verify``: the verifier's work besides its forward (warping, the rejection walk, masks);
- ``draft``: the drafter's work besides its forward (sampling, lookup, tree building);
- ``cache``: KV-cache bookkeeping on both sides (crop to the shared prefix, compaction);
- ``other``: the rest of the round (planning, stop rules and text, the loop itself).

Times are milliseconds per round and per emitted token; ``hf_ms_per_token`` is transformers'
``generate`` (and prompt lookup) on the same prompts in the same run, the bar to beat.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from specgrove.compute import on_compute
from specgrove_apps import print_report

PARTS = ("target_forward", "draft_forward", "verify", "draft", "cache")


class Clock:
    """Accumulates wall time per part; nested parts are subtracted from their enclosing one."""

    def __init__(self):
        self.total = defaultdict(float)
        self._stack: list[list] = []

    @contextmanager
    def part(self, name: str):
        frame = [name, 0.0]  # time of nested parts
        self._stack.append(frame)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self._stack.pop()
            self.total[name] += elapsed - frame[1]
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, owner, attr: str, name: str) -> bool:
        """Time owner.attr under ``name`` (generators: every resumption). False if it is absent."""
        import inspect

        original = getattr(owner, attr, None)
        if original is None:
            return False
        clock = self

        if inspect.isgeneratorfunction(original):
            def timed(*args, **kwargs):
                inner = original(*args, **kwargs)
                while True:
                    with clock.part(name):
                        item = next(inner, StopIteration)
                    if item is StopIteration:
                        return
                    yield item
        else:
            def timed(*args, **kwargs):
                with clock.part(name):
                    return original(*args, **kwargs)
        setattr(owner, attr, timed)
        return True


def instrument(clock: Clock, target) -> None:
    """Wrap what this checkout has (the names cover the current code and the one before it)."""
    import specgrove.models as models

    class_forward = models.CausalLM.forward
    class_features = models.CausalLM.forward_features

    def forward(self, *args, **kwargs):
        with clock.part("target_forward" if self is target else "draft_forward"):
            return class_forward(self, *args, **kwargs)

    def forward_features(self, *args, **kwargs):
        with clock.part("target_forward" if self is target else "draft_forward"):
            return class_features(self, *args, **kwargs)

    models.CausalLM.forward, models.CausalLM.forward_features = forward, forward_features
    clock.wrap(models.CachedSequence, "keep_path", "cache")
    clock.wrap(models.CachedSequence, "_sync", "cache")
    try:  # the checkout before the batched verifier
        import verifier.target as target_side

        for attr in ("verify", "verify_tree"):
            clock.wrap(target_side.TargetSession, attr, "verify")
    except ImportError:
        import verifier.batched as batched
        import verifier.worker as verifier_worker

        clock.wrap(batched.BatchedTarget, "forward", "target_forward")
        clock.wrap(batched.BatchedTarget, "keep_path", "cache")
        clock.wrap(verifier_worker.VerifierWorker, "_finish", "verify")
    try:
        import drafter.worker as drafter_worker

        clock.wrap(drafter_worker.DrafterWorker, "levels", "draft")
        clock.wrap(drafter_worker.DrafterWorker, "accept", "draft")
    except ImportError:
        pass
    import drafter.feature_sequence as feature_sequence
    import drafter.tree_growth as tree_growth
    import drafter.ngram as ngram

    for owner, attr in ((tree_growth.ModelDraftSession, "propose"), (tree_growth.ModelDraftSession, "grow_levels"),
                        (tree_growth.ModelDraftSession, "propose_tree"), (ngram.NgramDraftSession, "propose")):
        clock.wrap(owner, attr, "draft")  # nested parts of one name count once
    for attr in ("logits_for", "tree_logits"):  # the feature draft's passes: its layer and its LM head
        clock.wrap(feature_sequence.FeatureSequence, attr, "draft_forward")


def engines(target, drafter, ngram_len: int, chain_len: int, tree_shape):
    """The modes: plain decoding, chains with prompt lookup and with the draft, a tree."""
    from drafter.ngram import NgramDrafter
    from orchestrator.engine import SpeculativeEngine

    modes = {"specgrove-ar": SpeculativeEngine(target),
             f"chain-k{ngram_len}-ngram": SpeculativeEngine(target, NgramDrafter(target.vocab_size), ngram_len),
             f"chain-k{chain_len}-draft": SpeculativeEngine(target, drafter, chain_len)}
    try:
        from orchestrator.tree_plan import FixedTree  # the checkout before the round core took a plan object

        tree = FixedTree(tree_shape)
    except ImportError:
        tree = tree_shape
    modes["tree-m8"] = SpeculativeEngine(target, drafter, tree=tree)
    return modes


def hf_ms_per_token(target, prompts, max_new_tokens: int, **assist) -> float:
    import torch

    model = target.model
    tokens, elapsed = 0, 0.0
    for ids in prompts:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, **assist)
        elapsed += time.perf_counter() - start
        tokens += out.shape[1] - len(ids)
    return 1000 * elapsed / tokens


def profile(args) -> dict:
    import torch

    from drafter.factory import make_drafter
    from orchestrator.sequoia import SequoiaTable
    from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET, default_cache_dir
    from specgrove.models import load_model
    from specgrove.sampling import SamplingParams
    from specgrove.workloads import load_workload

    torch.set_num_threads(args.threads)
    cache = default_cache_dir()
    target = load_model(DEFAULT_TARGET, cache)
    drafter, _ = make_drafter(args.draft or DEFAULT_DRAFT, target, cache)
    prompts = [target.chat_prompt(p.text) if p.chat else target.encode(p.text)
               for p in load_workload(args.workload, args.num_prompts)]
    shape = SequoiaTable([0.6, 0.15, 0.05]).shape(8, 4)
    modes = engines(target, drafter, args.ngram_len, args.chain_len, shape)
    clock = Clock()
    instrument(clock, target)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    report = {"workload": args.workload, "num_prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
              "threads": args.threads, "draft": drafter.name, "modes": {}}
    for name, engine in modes.items():
        engine.generate(prompts[0], SamplingParams(max_new_tokens=8))  # warm-up
        clock.total.clear()
        rounds = tokens = 0
        start = time.perf_counter()
        for ids in prompts:
            result = engine.generate(ids, params)
            rounds += len(result.rounds)
            tokens += len(result.token_ids)
        wall = 1000 * (time.perf_counter() - start)
        parts = {part: clock.total[part] * 1000 for part in PARTS}
        parts["other"] = wall - sum(parts.values())
        report["modes"][name] = {
            "rounds": rounds, "tokens": tokens, "ms_per_token": round(wall / tokens, 3),
            "tokens_per_round": round(tokens / rounds, 3),
            "ms_per_round": {part: round(ms / rounds, 3) for part, ms in parts.items()},
            "ms_per_round_total": round(wall / rounds, 3),
        }
    report["hf_ms_per_token"] = {"generate": round(hf_ms_per_token(target, prompts, args.max_new_tokens), 3),
                                 f"prompt_lookup_{args.ngram_len}": round(hf_ms_per_token(
                                     target, prompts, args.max_new_tokens, prompt_lookup_num_tokens=args.ngram_len), 3)}
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specgrove_apps.profile_round", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="humaneval")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--ngram-len", type=int, default=4)
    parser.add_argument("--chain-len", type=int, default=4)
    parser.add_argument("--draft", help="the draft of the chain and tree modes (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    report = on_compute(profile, args)  # timed where served passes run (specgrove.compute)
    print_report(report, args.json)


if __name__ == "__main__":
    main()
