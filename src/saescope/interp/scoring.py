"""Score formulas (pure functions).

- EV correlation: Pearson r between true and predicted activations over all tokens of all sequences concatenated
  (not the mean of per-sequence correlations). A constant prediction or constant truth gives 0 and is flagged.
- R² = 1 − mean((t − p)²)/mean(t²); absolute deviation explained = 1 − mean|t − p| / mean|t| (automated-interp).
- Balanced accuracy = (TP/P + TN/N)/2 (delphi detection and fuzzing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Correlation:
    score: float
    constant: bool
    """True when either side is constant: the score is defined as 0."""


def correlation(true: list[float], pred: list[float]) -> Correlation:
    n = len(true)
    if n != len(pred):
        raise ValueError(f"{n} true activations but {len(pred)} predictions")
    if n < 2:
        return Correlation(0.0, True)
    mt, mp = sum(true) / n, sum(pred) / n
    vt = sum((t - mt) ** 2 for t in true)
    vp = sum((p - mp) ** 2 for p in pred)
    if vt <= 1e-24 or vp <= 1e-24:
        return Correlation(0.0, True)
    cov = sum((t - mt) * (p - mp) for t, p in zip(true, pred))
    return Correlation(max(-1.0, min(1.0, cov / math.sqrt(vt * vp))), False)


def rsquared(true: list[float], pred: list[float]) -> float | None:
    denom = sum(t * t for t in true) / max(len(true), 1)
    if denom <= 0:
        return None
    return 1 - sum((t - p) ** 2 for t, p in zip(true, pred)) / max(len(true), 1) / denom


def absolute_dev_explained(true: list[float], pred: list[float]) -> float | None:
    denom = sum(abs(t) for t in true) / max(len(true), 1)
    if denom <= 0:
        return None
    return 1 - sum(abs(t - p) for t, p in zip(true, pred)) / max(len(true), 1) / denom


def balanced_accuracy(labels: list[int], preds: list[int]) -> float | None:
    """None when either class is absent (the score is undefined, not 0.5)."""
    P = sum(1 for y in labels if y == 1)
    N = sum(1 for y in labels if y == 0)
    if P == 0 or N == 0:
        return None
    tp = sum(1 for y, p in zip(labels, preds) if y == 1 and p == 1)
    tn = sum(1 for y, p in zip(labels, preds) if y == 0 and p == 0)
    return (tp / P + tn / N) / 2
