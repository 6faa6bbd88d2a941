"""Fitting a label set to truth: its temperature (the logit scale) by NLL, and per-label
thresholds for a target precision. Pure numpy, on the cosines of stored vectors.

The NLL of softmax(s · cosines) is convex in s (a linear term plus a log-sum-exp of
terms linear in s), so a golden-section search over log s finds its minimum; the scale
stays within the label sets' bounds (0, 1000].
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from meter_batch.labels.label_sets import MAX_LOGIT_SCALE

MIN_FITTED_SCALE = 0.01


def softmax(cosines: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale · cosines) per row, float64, shifted by the row maximum."""
    logits = (cosines - cosines.max(axis=1, keepdims=True)) * scale
    exp = np.exp(logits)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def nll(cosines: np.ndarray, truth: np.ndarray, scale: float) -> float:
    logits = (cosines - cosines.max(axis=1, keepdims=True)) * scale
    log_norm = np.log(np.exp(logits).sum(axis=1))
    return float((log_norm - logits[np.arange(len(truth)), truth]).mean())


def fit_scale(cosines: np.ndarray, truth: np.ndarray, steps: int = 80) -> float:
    """The scale in [0.01, 1000] of the least NLL (golden-section search over log s)."""
    low, high = math.log(MIN_FITTED_SCALE), math.log(MAX_LOGIT_SCALE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(cosines, truth, math.exp(a)), nll(cosines, truth, math.exp(b))
    for _ in range(steps):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(cosines, truth, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(cosines, truth, math.exp(b))
    return math.exp((low + high) / 2)


def fit_thresholds(probs: np.ndarray, truth: np.ndarray, target: float) -> tuple[float, ...]:
    """Per label, the lowest ``min_prob`` at which that label's answers are right at
    least ``target`` of the time (answers below it abstain): the most images answered
    for the precision asked. A label that never reaches it gets 1.0 (always abstains
    short of certainty); a label never predicted, 0."""
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    thresholds = []
    for label in range(probs.shape[1]):
        mine = predicted == label
        if not mine.any():
            thresholds.append(0.0)
            continue
        order = np.argsort(-confidence[mine], kind="stable")
        right = (truth[mine] == label)[order]
        precision = np.cumsum(right) / np.arange(1, len(right) + 1)
        reached = np.flatnonzero(precision >= target)
        thresholds.append(float(confidence[mine][order][reached[-1]]) if len(reached) else 1.0)
    return tuple(thresholds)


def folds(count: int, k: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) for k-fold cross-validation, in a fixed shuffled order."""
    order = np.random.default_rng(seed).permutation(count)
    for fold in range(k):
        held = np.sort(order[fold::k])
        yield np.setdiff1d(np.arange(count), held), held
