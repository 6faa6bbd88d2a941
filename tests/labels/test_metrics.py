"""evaluate's figures against a hand computation on six images of three classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meter_batch.labels.metrics import evaluate_probs, expected_calibration_error, wilson

PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0, predicted 0
        [0.1, 0.8, 0.1],  # true 1, predicted 1
        [0.3, 0.6, 0.1],  # true 0, predicted 1
        [0.2, 0.2, 0.6],  # true 2, predicted 2
        [0.5, 0.4, 0.1],  # true 2, predicted 0
        [0.05, 0.9, 0.05],  # true 1, predicted 1
    ]
)
TRUTH = np.array([0, 1, 0, 2, 2, 1])
LABELS = ["a", "b", "c"]


def test_confusion_and_per_class_figures_are_the_hand_counts():
    figures = evaluate_probs(PROBS, TRUTH, LABELS, 0.0, 0.0)
    assert figures.confusion == ((1, 1, 0), (0, 2, 0), (1, 0, 1))
    assert [c.recall for c in figures.classes] == [0.5, 1.0, 0.5]
    assert [c.precision for c in figures.classes] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [c.f1 for c in figures.classes] == pytest.approx([0.5, 0.8, 2 / 3])
    assert [c.support for c in figures.classes] == [2, 2, 2]
    assert figures.accuracy.value == pytest.approx(4 / 6)
    assert figures.balanced_accuracy.value == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_calibration_figures_are_the_hand_computation():
    figures = evaluate_probs(PROBS, TRUTH, LABELS, 0.0, 0.0)
    # bins of 1/15: .7 -> 10, .8 -> 12, .6 and .6 -> 9 (one right), .5 -> 7, .9 -> 13
    assert figures.ece == pytest.approx((0.3 + 0.2 + 2 * 0.1 + 0.5 + 0.1) / 6)
    nll = -(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(0.6) + math.log(0.1)
            + math.log(0.9)) / 6  # fmt: skip
    assert figures.nll == pytest.approx(nll)
    assert figures.brier == pytest.approx((0.14 + 0.06 + 0.86 + 0.24 + 1.22 + 0.015) / 6)


def test_risk_coverage_and_abstention_are_the_hand_computation():
    figures = evaluate_probs(PROBS, TRUTH, LABELS, min_prob=0.65, min_margin=0.0)
    # by confidence: .9 ok, .8 ok, .7 ok, .6 wrong, .6 ok, .5 wrong
    assert [c for c, _ in figures.accuracy_at_coverage] == [1.0, 0.9, 0.8, 0.5]
    assert [a for _, a in figures.accuracy_at_coverage] == pytest.approx([4 / 6, 4 / 6, 4 / 5, 1])
    assert (figures.abstained, figures.kept_accuracy) == (0.5, 1.0)  # .6, .6, .5 abstain


def test_the_wilson_interval_is_the_textbook_one():
    # Wilson (1927) for 4 of 6 at z = 1.96: centre (p + z²/2n)/(1 + z²/n), etc.
    z, n, p = 1.959963984540054, 6, 4 / 6
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    interval = wilson(4, 6)
    assert (interval.low, interval.high) == pytest.approx((centre - half, centre + half))
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.3000, 0.9032)
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == pytest.approx(1.0)


def test_two_hundred_images_at_93_and_95_percent_overlap():
    """The issue's example: 0.93 against 0.95 on 200 images is no difference."""
    a, b = wilson(186, 200), wilson(190, 200)
    assert a.high > b.low


def test_a_perfectly_calibrated_bin_has_no_error_and_an_overconfident_one_has():
    assert expected_calibration_error(np.array([0.75] * 4), np.array([1, 1, 1, 0])) == 0.0
    assert expected_calibration_error(np.array([0.99] * 4), np.array([1, 0, 1, 0])) == (
        pytest.approx(0.49)
    )


def test_balanced_accuracy_has_an_interval_even_when_every_recall_is_0_or_1():
    figures = evaluate_probs(PROBS[[0, 1]], np.array([0, 1]), LABELS, 0.0, 0.0)
    interval = figures.balanced_accuracy
    assert interval.value == 1.0 and interval.low < 0.8  # two images prove little
