"""Goodness-of-fit helpers shared by the statistical exactness tests.

Pearson's chi-square test of observed counts against expected probabilities, pooling every
cell whose expected count is below 5 into one cell (the usual validity rule). Tests pass when
the p-value is above ALPHA = 1e-3 with a fixed seed, and their negative controls (deliberately
wrong samplers) must give p-values below NEGATIVE_ALPHA = 1e-6.

Power, stated in total variation: ``detectable_tv`` is the smallest δ such that *every*
distribution at total variation δ from the expected one (over the test's cells) is rejected with
probability ≥ 90% at the test's N and alpha. Why it holds: under an alternative p', Pearson's
statistic is approximately noncentral chi-square with noncentrality N·Σ(p'ᵢ − pᵢ)²/pᵢ, and by
Cauchy–Schwarz Σ(p'ᵢ − pᵢ)²/pᵢ ≥ (Σ|p'ᵢ − pᵢ|)² = 4δ². The bound is attained by the least
detectable shift: moving mass δ in proportion to p from one half of the distribution to the
other (``worst_shift``); shifts concentrated on a few cells are detected at smaller δ.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.stats import chi2, chisquare, ncx2

ALPHA = 1e-3
NEGATIVE_ALPHA = 1e-6
POWER = 0.9


def chi_square_p_value(samples, probs) -> float:
    """samples: 1-D ints in [0, len(probs)); probs: expected distribution (sums to 1)."""
    probs = np.asarray(probs, dtype=np.float64)
    counts = np.bincount(np.asarray(samples), minlength=len(probs)).astype(np.float64)
    assert len(counts) == len(probs), "a sample fell outside the support"
    return chi_square_counts_p_value(counts, probs)


def chi_square_counts_p_value(counts, probs) -> float:
    """``chi_square_p_value`` of per-cell counts [C] against probs [C]."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    counts = np.asarray(counts, dtype=np.float64)
    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        if obs[-1] > 0:
            return 0.0  # samples where the expected probability is zero
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp).pvalue)


def pooled_cells(probs, n: int) -> np.ndarray:
    """The probabilities of the cells the test compares at N = n: those expected ≥ 5 times,
    then one cell pooling the rest (when it has any mass)."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    big = probs * n >= 5
    rest = probs[~big].sum()
    return np.append(probs[big], rest) if rest > 0 else probs[big]


def detectable_tv(probs, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest total variation δ (over the test's cells) at which every shifted distribution
    fails the chi-square test at level alpha with probability ≥ power, for n samples."""
    df = len(pooled_cells(probs, n)) - 1
    assert df >= 1, "the test needs at least two cells"
    critical = chi2.isf(alpha, df)
    noncentrality = brentq(lambda nc: ncx2.sf(critical, df, nc) - power, 1e-9, 1e6)
    return float(np.sqrt(noncentrality / (4 * n)))


def worst_shift(probs, half: np.ndarray, tv: float) -> np.ndarray:
    """probs moved by total variation tv, in proportion, from the cells outside `half` (a
    boolean mask of cells holding exactly half the mass) to those inside it."""
    probs = np.asarray(probs, dtype=np.float64)
    assert abs(probs[half].sum() - 0.5) < 1e-9, "the cells of `half` must hold half the mass"
    return np.where(half, probs * (1 + 2 * tv), probs * (1 - 2 * tv))
