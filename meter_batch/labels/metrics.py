"""How good a label set's answers are on images whose truth is known: pure numpy.

Input: each image's probabilities over the set's labels (N, K) and the index of its true
label; the abstain rule of the set. Output: an ``Evaluation`` whose figures are those a
demanding user compares across label sets — accuracy and balanced accuracy with 95 %
intervals (so 0.93 against 0.95 on 200 images reads as no difference), per-class
precision / recall / F1, the confusion matrix, calibration (ECE over 15 equal-width
bins of the top-1 probability, NLL, multi-class Brier), risk-coverage and abstention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
COVERAGES = (1.0, 0.9, 0.8, 0.5)
Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ClassFigures:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    images: int
    accuracy: Interval
    balanced_accuracy: Interval
    classes: tuple[ClassFigures, ...]
    confusion: tuple[tuple[int, ...], ...]  # [true][predicted], in the set's label order
    ece: float
    nll: float
    brier: float
    accuracy_at_coverage: tuple[tuple[float, float], ...]  # (coverage, accuracy)
    abstained: float  # the share of images the set's abstain rule answers `unknown`
    kept_accuracy: float  # accuracy on the images it answers (NaN when none is kept)


def evaluate_probs(
    probs: np.ndarray,
    truth: np.ndarray,
    labels: list[str],
    min_prob: float,
    min_margin: float,
    label_min_probs: tuple[float, ...] = (),
) -> Evaluation:
    """The figures of (N, K) probabilities against the (N,) true label indexes; the
    abstain rule is the set's (``label_min_probs``: each label's own threshold)."""
    predicted = probs.argmax(axis=1)
    correct = predicted == truth
    confusion = _confusion(truth, predicted, len(labels))
    recalls = _ratios(np.diag(confusion), confusion.sum(axis=1))
    return Evaluation(
        images=len(truth),
        accuracy=wilson(int(correct.sum()), len(truth)),
        balanced_accuracy=_balanced(recalls, confusion.sum(axis=1)),
        classes=_class_figures(confusion, labels),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        ece=expected_calibration_error(probs.max(axis=1), correct),
        nll=float(-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None)).mean()),
        brier=float(((probs - np.eye(len(labels))[truth]) ** 2).sum(axis=1).mean()),
        accuracy_at_coverage=_risk_coverage(probs.max(axis=1), correct),
        **_abstention(probs, correct, min_prob, min_margin, label_min_probs),
    )


def wilson(successes: int, trials: int) -> Interval:
    """The share with its Wilson score 95 % interval (sound near 0 and 1, unlike p ± 2σ)."""
    if trials == 0:
        return Interval(math.nan, math.nan, math.nan)
    p = successes / trials
    denominator = 1 + Z95**2 / trials
    centre = (p + Z95**2 / (2 * trials)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / trials + Z95**2 / (4 * trials**2)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def _balanced(recalls: np.ndarray, support: np.ndarray) -> Interval:
    """Mean per-class recall over the classes present, ± 1.96 standard errors of a mean
    of independent class recalls. Each recall's variance is Agresti-Coull's, from
    (hits + 2) / (n + 4): a class recalled 0 or 1 of the time has no variance by the
    plain formula, which would claim certainty from 5 images."""
    present = support > 0
    if not present.any():
        return Interval(math.nan, math.nan, math.nan)
    r, n = recalls[present], support[present]
    adjusted = (r * n + 2) / (n + 4)
    value = float(r.mean())
    half = Z95 * math.sqrt(float((adjusted * (1 - adjusted) / (n + 4)).sum())) / len(r)
    return Interval(value, max(0.0, value - half), min(1.0, value + half))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Σ_bins (n_b / N) · |accuracy_b − mean confidence_b| over 15 equal-width bins of
    (0, 1]; a confidence of exactly 1 falls in the last bin."""
    if len(confidence) == 0:
        return math.nan
    bins = np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(confidence))


def _confusion(truth: np.ndarray, predicted: np.ndarray, count: int) -> np.ndarray:
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    return confusion


def _ratios(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (no such image: no credit)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _class_figures(confusion: np.ndarray, labels: list[str]) -> tuple[ClassFigures, ...]:
    hits = np.diag(confusion)
    precision = _ratios(hits, confusion.sum(axis=0))
    recall = _ratios(hits, confusion.sum(axis=1))
    f1 = _ratios(2 * precision * recall, precision + recall)
    support = confusion.sum(axis=1)
    return tuple(
        ClassFigures(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    )


def _risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Accuracy on the most confident 100 / 90 / 80 / 50 % (at least one image)."""
    order = np.argsort(-confidence, kind="stable")
    figures = []
    for coverage in COVERAGES:
        kept = order[: max(1, math.ceil(coverage * len(order)))] if len(order) else order
        figures.append((coverage, float(correct[kept].mean()) if len(kept) else math.nan))
    return tuple(figures)


def _abstention(
    probs: np.ndarray,
    correct: np.ndarray,
    min_prob: float,
    min_margin: float,
    label_min_probs: tuple[float, ...],
) -> dict[str, float]:
    """The set's own abstain rule (classify's): top-1 below min_prob or below its label's
    own threshold, or ahead of the runner-up by less than min_margin."""
    top = np.sort(probs, axis=1)[:, ::-1]
    second = top[:, 1] if probs.shape[1] > 1 else np.zeros(len(probs))
    abstain = (top[:, 0] < min_prob) | (top[:, 0] - second < min_margin)
    if label_min_probs:
        abstain |= top[:, 0] < np.asarray(label_min_probs)[probs.argmax(axis=1)]
    kept = correct[~abstain]
    return {
        "abstained": float(abstain.mean()) if len(abstain) else math.nan,
        "kept_accuracy": float(kept.mean()) if len(kept) else math.nan,
    }
