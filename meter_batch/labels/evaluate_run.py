"""`evaluate`: how good each label set's answers are on the images whose truth is known.

truth file -> the stored images it names -> their stored vectors x each set's label
matrix -> full probabilities (float64) -> figures (metrics.py) -> an evaluation record
per set in one commit, which the catalog's `evaluations` table shows. Never decodes an
image; a label-set version that was never classified has its prompts encoded with the
store's model (a few-shot one its head fitted, examples outside the store encoded), and
nothing of it is stored: an evaluation changes no prediction. A few-shot set's own
examples are left out of its figures: a head is not judged on what it learned from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from meter_batch.config import ModelSpec
from meter_batch.errors import ConfigError, InputError
from meter_batch.labels.examples import (
    ExampleCache,
    example_image_ids,
    example_version,
    few_shot_head,
)
from meter_batch.labels.head import FIT_SCALE, Head, text_head
from meter_batch.labels.label_sets import LabelSet, load_label_set
from meter_batch.labels.metrics import Evaluation, evaluate_probs
from meter_batch.labels.predictions import read_head, write_example_vectors
from meter_batch.labels.scoring import label_matrix, resolve_scale
from meter_batch.labels.truth import Truth, read_truth
from meter_batch.model.loading import load_verified
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import Store, commit, locked, next_manifest, open_existing, open_store
from meter_batch.store.layout import new_run_id
from meter_batch.store.read import live_ids_of_paths, vectors_of
from meter_batch.store.records import EvaluationRecord, Manifest


@dataclass(frozen=True)
class SetEvaluation:
    """One label set's figures, and what they were measured with."""

    label_set: str
    version: str
    stored_version: bool  # False: the version was never classified; its prompts were encoded
    logit_scale: float
    evaluation: Evaluation
    mode: str = "text"
    examples_left_out: int = 0  # truth images that are the set's own examples


@dataclass(frozen=True)
class EvaluateReport:
    truth_file: str
    truth_rows: int
    missing: tuple[str | int, ...]  # truth rows whose image is not a live image of the store
    sets: tuple[SetEvaluation, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TruthVectors:
    """The truth rows found in the store: their vectors and true labels, in one order."""

    ids: np.ndarray  # (N,) int64 image ids
    vectors: np.ndarray  # (N, D) float32
    labels: tuple[str, ...]

    def without(self, image_ids: frozenset[int]) -> TruthVectors:
        keep = ~np.isin(self.ids, np.fromiter(image_ids, dtype=np.int64, count=len(image_ids)))
        labels = tuple(label for label, kept in zip(self.labels, keep, strict=True) if kept)
        return TruthVectors(self.ids[keep], self.vectors[keep], labels)

    def indexes(self, label_set: LabelSet) -> np.ndarray:
        """The true labels as indexes into the set's labels."""
        index = {label: i for i, label in enumerate(label_set.label_ids)}
        return np.asarray([index[label] for label in self.labels], dtype=np.int64)


def evaluate(
    store_root: Path, label_files: list[Path], truth_file: Path, model: ModelSpec | None = None
) -> EvaluateReport:
    """Evaluate each label set against the truth file; record the figures (one commit)."""
    label_sets = [load_label_set(path) for path in label_files]
    truth = read_truth(truth_file)
    for path, label_set in zip(label_files, label_sets, strict=True):
        check_truth_labels(path, label_set, truth)
    store = open_store(store_root)
    scored, missing = truth_in_store(store, truth)
    cache = ExampleCache(store)  # example files encoded for one set serve the next
    sets = tuple(_evaluate_set(store, s, scored, model, cache) for s in label_sets)
    report = EvaluateReport(str(truth_file), len(truth.keys), missing, sets)
    _record(store_root, truth, report, cache)
    return report


def check_truth_labels(path: Path, label_set: LabelSet, truth: Truth) -> None:
    unknown = sorted(set(truth.labels) - set(label_set.label_ids))
    if unknown:
        raise ConfigError(
            f"truth file {truth.file} has labels that label set {path} does not have: "
            f"{', '.join(map(repr, unknown[:5]))}; its ids: {', '.join(label_set.label_ids)}"
        )


def truth_in_store(store: Store, truth: Truth) -> tuple[TruthVectors, tuple[str | int, ...]]:
    if truth.key == "path":
        found = live_ids_of_paths(store, [str(k) for k in truth.keys])
        ids = {key: found.get(str(key)) for key in truth.keys}
        stored_ids, vectors = vectors_of(store, [i for i in ids.values() if i is not None])
    else:
        stored_ids, vectors = vectors_of(store, [int(k) for k in truth.keys])
        present = set(stored_ids.tolist())
        ids = {key: int(key) if int(key) in present else None for key in truth.keys}
    missing = tuple(key for key, image_id in ids.items() if image_id is None)
    if len(missing) == len(truth.keys):
        raise InputError(
            f"none of the {len(truth.keys)} rows of truth file {truth.file} names a live "
            f"image of store {store.root} (by {truth.key}; paths as stored, with the prefix)"
        )
    label_of = {ids[key]: label for key, label in zip(truth.keys, truth.labels, strict=True)}
    labels = tuple(label_of[int(i)] for i in stored_ids)
    return TruthVectors(stored_ids, vectors, labels), missing


def _evaluate_set(
    store: Store,
    label_set: LabelSet,
    truth: TruthVectors,
    model: ModelSpec | None,
    cache: ExampleCache,
) -> SetEvaluation:
    found = version_head(store, label_set, model, cache)
    scored = truth.without(found.example_ids)
    if not scored.labels:
        raise InputError(
            f"every truth image found in the store is an example of label set "
            f"{label_set.name!r}: there is nothing left to judge it on"
        )
    probs = probabilities(scored.vectors, found.head, found.scale)
    rule = label_set.abstain
    figures = evaluate_probs(
        probs,
        scored.indexes(label_set),
        label_set.label_ids,
        rule.min_prob,
        rule.min_margin,
        label_set.label_min_probs,
    )
    left_out = len(truth.labels) - len(scored.labels)
    return SetEvaluation(
        label_set.name,
        found.version,
        found.stored,
        found.scale,
        figures,
        label_set.mode,
        left_out,
    )


@dataclass(frozen=True)
class VersionHead:
    """A label set's version in a store and its head: stored, or (never classified) made
    now from the store's model and nothing of it kept."""

    version: str
    head: Head
    scale: float
    stored: bool
    example_ids: frozenset[int]  # live images whose bytes are among the set's examples


def version_head(
    store: Store, label_set: LabelSet, model: ModelSpec | None, cache: ExampleCache
) -> VersionHead:
    """Example files it encodes stay in ``cache.fresh`` for the caller to commit."""
    version, located = example_version(store, label_set)
    example_ids = frozenset() if located is None else example_image_ids(store, located)
    entry = store.manifest.label_set(version)
    if entry is not None:
        scale = float(entry.logit_scale)
        return VersionHead(version, read_head(store, entry), scale, True, example_ids)
    loaded = load_verified(store.model_source, store.identity, store.root, model)
    text, scale = label_matrix(loaded, label_set), resolve_scale(loaded, label_set)
    head = text_head(text)
    if located is not None:
        fitted = few_shot_head(cache, label_set, located, text, FIT_SCALE, lambda: loaded)
        head = fitted.head
    return VersionHead(version, head, scale, False, example_ids)


def probabilities(vectors: np.ndarray, head: Head, scale: float) -> np.ndarray:
    """softmax(scale · scores) over every label, in float64 (classify's top-k are its top)."""
    logits = head.scores(vectors)
    logits = (logits - logits.max(axis=1, keepdims=True)) * scale
    exp = np.exp(logits)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def _record(store_root: Path, truth: Truth, report: EvaluateReport, cache: ExampleCache) -> None:
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    records = [_evaluation_record(s, truth, now) for s in report.sets]
    with locked(store_root) as lock:
        store = open_existing(store_root, lock)
        manifest = next_manifest(store, evaluations=(*store.manifest.evaluations, *records))
        commit_examples(store, manifest, cache)
        refresh_catalog(store)


def commit_examples(store: Store, manifest: Manifest, cache: ExampleCache) -> None:
    """Commit ``manifest`` with the example files this command encoded, if any."""
    staged = []
    if cache.fresh:
        staged.append(write_example_vectors(store, new_run_id(), cache.fresh))
        manifest = replace(manifest, example_parts=(*manifest.example_parts, *staged))
    commit(store, manifest, staged, None)


def _evaluation_record(result: SetEvaluation, truth: Truth, now: str) -> EvaluationRecord:
    figures = result.evaluation
    coverage = dict(figures.accuracy_at_coverage)
    details = {"classes": [asdict(c) for c in figures.classes], "confusion": figures.confusion}
    return EvaluationRecord(
        label_set=result.label_set,
        version=result.version,
        evaluated_at=now,
        truth_file=str(truth.file.resolve()),
        truth_sha256=truth.sha256,
        truth_rows=len(truth.keys),
        images=figures.images,
        accuracy=figures.accuracy.value,
        accuracy_low=figures.accuracy.low,
        accuracy_high=figures.accuracy.high,
        balanced_accuracy=figures.balanced_accuracy.value,
        balanced_accuracy_low=figures.balanced_accuracy.low,
        balanced_accuracy_high=figures.balanced_accuracy.high,
        ece=figures.ece,
        nll=figures.nll,
        brier=figures.brier,
        accuracy_at_90=coverage[0.9],
        accuracy_at_80=coverage[0.8],
        accuracy_at_50=coverage[0.5],
        abstained=figures.abstained,
        kept_accuracy=None if np.isnan(figures.kept_accuracy) else figures.kept_accuracy,
        examples_left_out=result.examples_left_out or None,
        details=json.dumps(details, ensure_ascii=False),
    )
