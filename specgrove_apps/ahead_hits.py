"""How often a guessed next round would be right (guessed draft-ahead, drafter/guess.py).

While round r is verified, a drafter could draw round r + 1 under guessed verdicts: "j draft
tokens accepted, then token x", for each j = 0 .. K, with x among the draft's own top candidates
at position j + 1 (its drafted token there excluded when j < K, since a rejection means the
target's token differs). A verifier holding those guessed trees could start the next pass the
moment its verdict matches one. This measures the share of rounds whose verdict is among R such
guesses per j (``hit_top{R}_every_j``: (K + 1) · R guesses) or among R guesses of the full path
only (``hit_top{R}_full_path_only``), or among the N guesses the draft itself deems most likely
(``hit_scored_top{N}``): a guess (j, x) scores q'_1(d_1) ⋯ q'_j(d_j) · q'_(j+1)(x), q' being the
draft's distribution at T = 1 over its candidates (recovered from q at the run's temperature).
That recovery approximates what a served drafter scores: it sees only the draft's top-n
candidates (renormalised), and q's floor of 1e-30 caps a recovered logit gap at 69·T nats
(3.5 at T = 0.05), where the served scores use the draft's logits over its whole head.

Chain rounds of K are drawn and verified through the engine's own workers, with the draft one
level deeper than verified, for its candidates at the bonus position. At T = 0 the draft's q is
one-hot, so the rounds run at a small temperature (default 0.05), close to greedy but with q
ranking the candidates.

``python -m specgrove_apps.ahead_hits [--workloads humaneval,chat] [--num-prompts 8] [--json PATH]``
"""

from __future__ import annotations

from dataclasses import replace

import argparse
import collections
import json
import uuid

import torch

from drafter.guess import likely_verdicts
from drafter.tree_growth import tree_from_levels
from specgrove.budget import DraftBudget
from specgrove.round import Round
from specgrove.sampling import SamplingParams

RANKS = (1, 2, 3, 5)
SCORED = (1, 2, 3, 5, 8, 10, 15)


def scored_rank(rows: list[tuple[torch.Tensor, torch.Tensor]], chain: list[int], temperature: float,
                verdict: tuple[int, int]) -> int:
    """The rank (1-based; 0: not among the first max(SCORED)) of ``verdict`` (j, next token) among
    the guesses ``likely_verdicts`` ranks (what ``guess_steps(count=N)`` guesses). rows[i]: the
    draft's (ids, q) at position i + 1 (i = 0..K), q warped at ``temperature``, whose logits over
    its candidates are recovered as temperature · log q."""
    vocab = 1 + max(int(ids.max()) for ids, _ in rows)
    logits = [torch.full((vocab,), float("-inf")).index_put((ids,), temperature * torch.log(q.clamp_min(1e-30)))
              for ids, q in rows]
    order = likely_verdicts(logits, chain, max(SCORED))
    return order.index(verdict) + 1 if verdict in order else 0


def verdict_ranks(engine, prompt_ids: list[int], k: int, params: SamplingParams) -> list[tuple[int, int, int]]:
    """Per speculative round of one generation: (j accepted, the rank of the next token among the
    draft's candidates at position j + 1, 0 when not among them, the verdict's ``scored_rank``)."""
    session, step, context, start, rows = uuid.uuid4().hex, 0, list(prompt_ids), len(prompt_ids), []
    feeds = engine.drafts.needs_features
    try:
        while len(context) - start < params.max_new_tokens:
            now = list(context)
            r = Round(session, step, tuple(now), params, params.seed or 0)
            engine.drafts.prefetch_features(r, lambda s: (s, engine.verifier.prefix_features(session, now, s)))
            levels = list(engine.drafts.levels(r, list(range(-1, k)), DraftBudget(k + 1)))
            tree = tree_from_levels(levels[:k] if len(levels) > k else [])  # short: the first round, a plain step
            features_from = len(now) - 1 if feeds and tree.size else None
            verdict, _, features, _ = engine.verifier.verify(replace(r, features_from=features_from), tree)
            if tree.size:
                with engine.drafts.lock:
                    engine.drafts.accept(session, step, verdict, (features_from, features) if feeds else None)
                j = len(verdict.accepted_tokens)
                ids, q = levels[j].q_rows[j]  # the draft's q at position j + 1 (its row: parent node j − 1, + 1)
                order = [int(i) for i in ids[torch.argsort(q, descending=True)]]
                if j < k:
                    order = [i for i in order if i != levels[j].tokens[0]]
                chain = [level.tokens[0] for level in levels[:k]]
                scored = scored_rank([levels[i].q_rows[i] for i in range(k + 1)], chain, params.temperature,
                                     (j, verdict.next_token))
                rows.append((j, order.index(verdict.next_token) + 1 if verdict.next_token in order else 0, scored))
            context += verdict.accepted_tokens + [verdict.next_token]
            step += 1
    finally:
        engine.verifier.release(session)
        engine.drafts.release(session)
    return rows


def guess_hits(engine, prompts: list[list[int]], k: int = 4, max_new_tokens: int = 64,
               temperature: float = 0.05, seed: int = 0) -> dict:
    if temperature <= 0:
        raise ValueError("ahead_hits ranks candidates by the draft's q: the temperature must be above 0")
    params = SamplingParams(temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    rows = [row for ids in prompts for row in verdict_ranks(engine, ids, k, params)]
    n = max(1, len(rows))
    accepted = collections.Counter(j for j, _, _ in rows)
    report = {"rounds": len(rows), "draft_len": k, "temperature": temperature,
              "accepted_share": {str(j): round(accepted[j] / n, 4) for j in range(k + 1)}}
    for r in RANKS:
        report[f"hit_top{r}_every_j"] = round(sum(0 < rank <= r for _, rank, _ in rows) / n, 4)
        report[f"hit_top{r}_full_path_only"] = round(sum(0 < rank <= r and j == k for j, rank, _ in rows) / n, 4)
    for r in SCORED:
        report[f"hit_scored_top{r}"] = round(sum(0 < rank <= r for _, _, rank in rows) / n, 4)
    return report


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET
    from specgrove.workloads import load_workload
    from specgrove_apps.assemble import EngineSpec, assemble

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="humaneval,chat")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--draft-len", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "specgrove")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    engine = assemble(EngineSpec(mode="chain", target=DEFAULT_TARGET, draft=args.draft, draft_len=args.draft_len,
                                 stop_policy="static"), args.cache_dir).engine
    report = {}
    for workload in args.workloads.split(","):
        prompts = load_workload(workload, args.num_prompts)
        ids = [engine.target.chat_prompt(p.text) if p.chat else engine.target.encode(p.text) for p in prompts]
        report[workload] = guess_hits(engine, ids, args.draft_len, args.max_new_tokens, args.temperature)
        print(workload, json.dumps(report[workload]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
