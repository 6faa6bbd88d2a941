"""`calibrate`: fit a label set's temperature (and per-label thresholds) to truth, and
write the fitted set as a new file (a new version).

truth -> stored vectors -> cosines with the version's label matrix -> k-fold: fit on
k-1 folds, score the held-out one -> before / after figures on held-out rows only (never
fitted and reported on the same rows) -> the fit on every row -> the new label-set file.
Nothing is committed but the vectors of example files outside the store that it had to
encode (so that no later command encodes them again): classify the written file to use it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from meter_batch.config import ModelSpec
from meter_batch.errors import ConfigError
from meter_batch.labels.calibration import fit_scale, fit_thresholds, folds, softmax
from meter_batch.labels.evaluate_run import (
    check_truth_labels,
    commit_examples,
    truth_in_store,
    version_head,
)
from meter_batch.labels.examples import ExampleCache
from meter_batch.labels.label_sets import LabelSet, label_set_toml, load_label_set
from meter_batch.labels.metrics import Evaluation, evaluate_probs
from meter_batch.labels.truth import read_truth
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import locked, next_manifest, open_existing, open_store


@dataclass(frozen=True)
class Fitted:
    scale: float
    thresholds: tuple[float, ...]  # per label; () without a target precision


@dataclass(frozen=True)
class CalibrationReport:
    label_set: str
    images: int
    folds: int
    before: Evaluation  # the file's own settings, on every truth image
    after: Evaluation  # each image scored with the fit of the folds it was not in
    fitted: Fitted  # the fit on every image: what the written file holds
    written: str


def calibrate(
    store_root: Path,
    labels_file: Path,
    truth_file: Path,
    out: Path,
    target_precision: float | None = None,
    k: int = 5,
    model: ModelSpec | None = None,
) -> CalibrationReport:
    label_set, truth = load_label_set(labels_file), read_truth(truth_file)
    check_truth_labels(labels_file, label_set, truth)
    _check_settings(out, labels_file, target_precision, k)
    store = open_store(store_root)
    found, _ = truth_in_store(store, truth)
    cache = ExampleCache(store)
    version = version_head(store, label_set, model, cache)
    scored = found.without(version.example_ids)  # a head is not calibrated on its examples
    if len(scored.labels) < 2 * k:
        raise ConfigError(
            f"calibrate needs at least {2 * k} truth images in the store for {k} folds; "
            f"{len(scored.labels)} found"
        )
    scale = version.scale
    cosines = version.head.scores(scored.vectors)
    truth_index = scored.indexes(label_set)
    before = _figures(label_set, softmax(cosines, scale), truth_index, label_set.label_min_probs)
    after = _held_out(label_set, cosines, truth_index, target_precision, k)
    fitted = _fit(cosines, truth_index, target_precision)
    out.write_text(label_set_toml(_fitted_set(label_set, fitted)), encoding="utf-8")
    if cache.fresh:  # example files encoded for this fit: kept, so no command redoes them
        with locked(store_root) as lock:
            store = open_existing(store_root, lock)
            commit_examples(store, next_manifest(store), cache)
            refresh_catalog(store)
    return CalibrationReport(label_set.name, len(truth_index), k, before, after, fitted, str(out))


def _check_settings(out: Path, labels_file: Path, target: float | None, k: int) -> None:
    if target is not None and not 0 < target < 1:
        raise ConfigError(f"--target-precision must be between 0 and 1; got {target}")
    if k < 2:
        raise ConfigError(f"--folds must be at least 2; got {k}")
    if out.resolve() == labels_file.resolve():
        raise ConfigError(f"-o {out} is the label-set file itself; write the fit elsewhere")
    if not out.parent.is_dir():
        raise ConfigError(f"-o: folder {out.parent} does not exist")


def _fit(cosines: np.ndarray, truth: np.ndarray, target: float | None) -> Fitted:
    scale = fit_scale(cosines, truth)
    thresholds = () if target is None else fit_thresholds(softmax(cosines, scale), truth, target)
    return Fitted(scale, thresholds)


def _held_out(
    label_set: LabelSet, cosines: np.ndarray, truth: np.ndarray, target: float | None, k: int
) -> Evaluation:
    """Every image's probabilities and thresholds from the fit of the other folds."""
    probs = np.zeros_like(cosines)
    thresholds = np.zeros(len(truth))
    for fit_rows, held in folds(len(truth), k):
        fitted = _fit(cosines[fit_rows], truth[fit_rows], target)
        probs[held] = softmax(cosines[held], fitted.scale)
        if fitted.thresholds:
            thresholds[held] = np.asarray(fitted.thresholds)[probs[held].argmax(axis=1)]
    figures = _figures(label_set, probs, truth, ())
    if target is None:
        return figures
    top = np.sort(probs, axis=1)[:, ::-1]
    second = top[:, 1] if probs.shape[1] > 1 else np.zeros(len(top))
    rule = label_set.abstain
    kept = (top[:, 0] >= rule.min_prob) & (top[:, 0] - second >= rule.min_margin)
    kept &= top[:, 0] >= thresholds  # each fold's own thresholds, on its own rows
    return _with_thresholds(figures, probs, truth, kept)


def _figures(
    label_set: LabelSet, probs: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...]
) -> Evaluation:
    rule = label_set.abstain
    return evaluate_probs(
        probs, truth, label_set.label_ids, rule.min_prob, rule.min_margin, thresholds
    )


def _with_thresholds(
    figures: Evaluation, probs: np.ndarray, truth: np.ndarray, kept: np.ndarray
) -> Evaluation:
    correct = probs.argmax(axis=1) == truth
    accuracy = float(correct[kept].mean()) if kept.any() else float("nan")
    return replace(figures, abstained=float((~kept).mean()), kept_accuracy=accuracy)


def _fitted_set(label_set: LabelSet, fitted: Fitted) -> LabelSet:
    labels = label_set.labels
    if fitted.thresholds:
        labels = tuple(
            replace(label, min_prob=round(t, 6))
            for label, t in zip(labels, fitted.thresholds, strict=True)
        )
    return replace(label_set, labels=labels, logit_scale=round(fitted.scale, 6))
