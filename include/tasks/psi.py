"""The population stability index (PSI) over fixed bins: the drift check's and the canary's measure of
how far one distribution of values moved from another."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

BINS = 10  # numeric bins: the reference's deciles


def psi_from_shares(reference: ArrayLike, current: ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index of two share vectors over the same bins (empty bins clipped to eps)."""
    r = np.clip(np.asarray(reference, dtype=float), eps, None)
    c = np.clip(np.asarray(current, dtype=float), eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin edges from a reference sample: its inner quantiles; with ``bins`` or fewer distinct values
    one bin per value plus one below and one above them (a move between tied values, or beyond the
    reference's range, is never binned away)."""
    ref = np.asarray(values, dtype=float)
    ref = ref[np.isfinite(ref)]
    if not len(ref):
        return np.empty(0)
    distinct = np.unique(ref)
    if len(distinct) <= bins:
        span = 1e-9 * max(1.0, float(np.abs(distinct).max()))
        mids = (distinct[:-1] + distinct[1:]) / 2
        return np.concatenate([[distinct[0] - span], mids, [distinct[-1] + span]])
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def numeric_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value; NaN goes to the last bin (missing)."""
    x = np.asarray(values, dtype=float)
    out = np.searchsorted(edges, x, side="right")
    out[~np.isfinite(x)] = len(edges) + 1
    return out
