"""The guessed-draft-ahead hit rates are counted from real rounds (tiny models)."""

from drafter.tree_growth import ModelDrafter
from orchestrator.engine import SpeculativeEngine
import torch

from specgrove_apps.ahead_hits import RANKS, SCORED, guess_hits, scored_rank, verdict_ranks
from specgrove.sampling import SamplingParams


def test_hit_rates_come_from_the_rounds_verdicts(tiny_target, tiny_draft):
    engine = SpeculativeEngine(tiny_target, ModelDrafter(tiny_draft), draft_len=4)
    prompts = [tiny_target.encode("a b c"), tiny_target.encode("the cat sat")]
    params = SamplingParams(temperature=0.05, seed=3, max_new_tokens=24)
    rows = [row for ids in prompts for row in verdict_ranks(engine, ids, 4, params)]
    assert rows and all(0 <= j <= 4 and rank >= 0 and scored >= 0 for j, rank, scored in rows)
    report = guess_hits(engine, prompts, 4, 24, 0.05, seed=3)
    assert report["rounds"] == len(rows)  # the same seeded rounds
    assert abs(sum(report["accepted_share"].values()) - 1) < 1e-3
    for r in RANKS:
        want = sum(0 < rank <= r for _, rank, _ in rows) / len(rows)
        assert abs(report[f"hit_top{r}_every_j"] - want) < 1e-4
        assert report[f"hit_top{r}_full_path_only"] <= report[f"hit_top{r}_every_j"]
    every = [report[f"hit_top{r}_every_j"] for r in RANKS]
    assert every == sorted(every)  # more guesses never hit less
    scored = [report[f"hit_scored_top{r}"] for r in SCORED]
    assert scored == sorted(scored)


def test_guesses_are_scored_by_the_drafts_probability_of_the_verdict():
    """Chain d = (5, 7), T = 1 rows: a verdict (j, x) scores q_1(d_1) .. q_j(d_j) q_(j+1)(x), x not d_(j+1)."""
    rows = [(torch.tensor([5, 6]), torch.tensor([0.8, 0.2])),  # position 1: d_1 = 5
            (torch.tensor([7, 8]), torch.tensor([0.5, 0.5])),  # position 2: d_2 = 7
            (torch.tensor([9, 3]), torch.tensor([0.9, 0.1]))]  # position 3: the bonus
    # scores: (0, 6) 0.2; (1, 8) 0.8 * 0.5 = 0.4; (2, 9) 0.8 * 0.5 * 0.9 = 0.36; (2, 3) 0.04
    ranks = {v: scored_rank(rows, [5, 7], 1.0, v) for v in [(1, 8), (2, 9), (0, 6), (2, 3), (0, 5), (1, 7)]}
    assert ranks == {(1, 8): 1, (2, 9): 2, (0, 6): 3, (2, 3): 4, (0, 5): 0, (1, 7): 0}
    # q at T = 0.5 is p^2 renormalised; the scores (and so the ranks) are recovered at T = 1
    sharp = [(ids, q ** 2 / (q ** 2).sum()) for ids, q in rows]
    assert {v: scored_rank(sharp, [5, 7], 0.5, v) for v in ranks} == ranks
