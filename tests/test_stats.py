"""The power helper of tests/stats.py, checked by simulation: at the TV it reports, the least
detectable shift is rejected about 90% of the time, and concentrated shifts more often."""

import numpy as np
import pytest

from tests.stats import (ALPHA, chi_square_counts_p_value, chi_square_p_value, detectable_tv, pooled_cells,
                         worst_shift)

PROBS = np.array([0.2, 0.15, 0.1, 0.05, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02])  # cells 0-3 hold half
HALF = np.arange(10) < 4
N = 1500
TRIALS = 1000


def rejection_rate(probs, shifted, n, rng) -> float:
    counts = rng.multinomial(n, shifted, size=TRIALS)  # [TRIALS, C]
    return float(np.mean([chi_square_counts_p_value(c, probs) < ALPHA for c in counts]))


def test_pooled_cells_follow_the_expected_count_rule():
    assert len(pooled_cells(PROBS, N)) == 10  # every cell expected ≥ 30 times
    # at N = 100 the cells of 0.03 and 0.02 are expected 3 and 2 times: pooled into one
    assert pooled_cells(PROBS, 100).tolist() == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.2, 0.1, 0.1, 0.05, 0.05])
    assert chi_square_p_value(np.repeat(np.arange(10), (PROBS * 1000).astype(int)), PROBS) == pytest.approx(1.0)


def test_detectable_tv_shrinks_as_one_over_root_n():
    assert detectable_tv(PROBS, 4 * N) == pytest.approx(detectable_tv(PROBS, N) / 2, rel=1e-6)
    assert detectable_tv(PROBS, N, alpha=1e-6) > detectable_tv(PROBS, N)


def test_the_least_detectable_shift_at_the_reported_tv_is_rejected_90_percent_of_the_time():
    rng = np.random.default_rng(0)
    tv = detectable_tv(PROBS, N)
    assert 0.03 < tv < 0.15
    shifted = worst_shift(PROBS, HALF, tv)
    assert 0.5 * np.abs(shifted - PROBS).sum() == pytest.approx(tv)
    assert 0.85 < rejection_rate(PROBS, shifted, N, rng) < 0.95  # the noncentral approximation holds
    assert rejection_rate(PROBS, worst_shift(PROBS, HALF, 0.6 * tv), N, rng) < 0.5  # less shift: lower power
    concentrated = PROBS.copy()
    concentrated[0] += tv  # the same TV moved between two cells is easier to see
    concentrated[4] -= tv
    assert rejection_rate(PROBS, concentrated, N, rng) > 0.95
    assert rejection_rate(PROBS, PROBS, N, rng) < 0.01  # no shift: false alarms at about ALPHA
