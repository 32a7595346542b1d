"""The guessed-draft-ahead hit rates are counted from real rounds (tiny models)."""

from drafter.model_drafter import ModelDrafter
from orchestrator.engine import SpeculativeEngine
from specgrove_apps.ahead_hits import RANKS, guess_hits, verdict_ranks
from specgrove.sampling import SamplingParams


def test_hit_rates_come_from_the_rounds_verdicts(tiny_target, tiny_draft):
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), draft_len=4)
    prompts = [tiny_target.encode("a b c"), tiny_target.encode("the cat sat")]
    params = SamplingParams(temperature=0.05, seed=3, max_new_tokens=24)
    rows = [row for ids in prompts for row in verdict_ranks(engine, ids, 4, params)]
    assert rows and all(0 <= j <= 4 and rank >= 0 for j, rank in rows)
    report = guess_hits(engine, prompts, 4, 24, 0.05, seed=3)
    assert report["rounds"] == len(rows)  # the same seeded rounds
    assert abs(sum(report["accepted_share"].values()) - 1) < 1e-3
    for r in RANKS:
        want = sum(0 < rank <= r for _, rank in rows) / len(rows)
        assert abs(report[f"hit_top{r}_every_j"] - want) < 1e-4
        assert report[f"hit_top{r}_full_path_only"] <= report[f"hit_top{r}_every_j"]
    every = [report[f"hit_top{r}_every_j"] for r in RANKS]
    assert every == sorted(every)  # more guesses never hit less
