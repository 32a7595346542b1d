"""Goodness-of-fit helper shared by the statistical exactness tests.

Pearson's chi-square test of observed counts against expected probabilities, pooling every
cell whose expected count is below 5 into one cell (the usual validity rule). Tests pass when
the p-value is above ALPHA = 1e-3 with a fixed seed, and their negative controls (deliberately
wrong samplers) must give p-values below NEGATIVE_ALPHA = 1e-6.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chisquare

ALPHA = 1e-3
NEGATIVE_ALPHA = 1e-6


def chi_square_p_value(samples, probs) -> float:
    """samples: 1-D ints in [0, len(probs)); probs: expected distribution (sums to 1)."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    counts = np.bincount(np.asarray(samples), minlength=len(probs)).astype(np.float64)
    assert len(counts) == len(probs), "a sample fell outside the support"
    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        if obs[-1] > 0:
            return 0.0  # samples where the expected probability is zero
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp).pvalue)
