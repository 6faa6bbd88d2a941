"""`classify`: score every stored image not yet scored under a label-set version.

label set file -> (first time) the label matrix, from the store's own text encoder, and
for a few-shot set its head fitted to the example vectors (examples.py) -> the stored
vectors x head, streamed -> staged prediction parts -> one commit. Opens no image but
examples outside the store, once: the vectors files are all it reads.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from meter_batch.config import ModelSpec
from meter_batch.labels.examples import (
    ExampleCache,
    LocatedExamples,
    example_version,
    few_shot_head,
)
from meter_batch.labels.few_shot import describe
from meter_batch.labels.head import FIT_SCALE, Head, text_head
from meter_batch.labels.label_sets import LabelSet, load_label_set
from meter_batch.labels.predictions import (
    PredictionWriter,
    read_head,
    write_examples,
    write_label_matrix,
)
from meter_batch.labels.scoring import (
    Scorer,
    ScoreSettings,
    label_matrix,
    resolve_scale,
    score_files,
)
from meter_batch.labels.versions import after_classify
from meter_batch.model.loading import load_verified
from meter_batch.progress import Progress
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import (
    Store,
    commit,
    locked,
    next_manifest,
    open_existing,
    open_store,
)
from meter_batch.store.layout import new_run_id
from meter_batch.store.read import tombstoned_ids
from meter_batch.store.records import LabelSetEntry
from meter_batch.store.vectors import BATCH_ROWS


@dataclass(frozen=True)
class ClassifySummary:
    store: str
    label_set: str
    version: str
    logit_scale: float
    scored: int
    abstained: int
    seconds: float
    embeddings_per_s: float
    few_shot: str | None = None  # the fitted few-shot head, described (a new version)
    examples_encoded: int = 0  # example files outside the store encoded now (once)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Version:
    """The label-set version being scored; a new one's matrix is still in staging/."""

    entry: LabelSetEntry
    new: bool
    head: Head | None = None  # a new version's, in memory (its files are still staged)


def classify(
    store_root: Path,
    labels_file: Path,
    model: ModelSpec | None = None,
    interactive: bool | None = None,
    make_current: bool = False,
) -> ClassifySummary:
    """Score every stored image not yet scored under this label-set version; commit.
    ``make_current`` (the nightly job): this version becomes the one `latest_predictions`
    shows, unless a person pinned another; otherwise only a name's first version does."""
    started = time.monotonic()
    label_set = load_label_set(labels_file)
    open_store(store_root)  # fails clearly (and creates nothing) when it is not a store
    with locked(store_root) as lock:
        store = open_existing(store_root, lock)
        version = _version(store, label_set, model)
        writer, abstained = _score_new_images(store, version, interactive)
        _commit_label_set(store, version, writer.finish(), make_current)
        refresh_catalog(store)
    seconds = time.monotonic() - started
    entry, fit = version.entry, version.entry.few_shot if version.new else None
    return ClassifySummary(
        store=str(store_root),
        label_set=label_set.name,
        version=entry.version,
        logit_scale=entry.logit_scale,
        scored=writer.rows,
        abstained=abstained,
        seconds=round(seconds, 3),
        embeddings_per_s=round(writer.rows / seconds, 1) if seconds > 0 else 0.0,
        few_shot=describe(fit) if fit else None,
        examples_encoded=fit.encoded if fit else 0,
    )


def _score_new_images(
    store: Store, version: _Version, interactive: bool | None
) -> tuple[PredictionWriter, int]:
    """Stream the images not yet scored under the version into staged prediction parts;
    the writer (not yet finished) and how many abstained."""
    entry = version.entry
    scorer = Scorer(version.head or read_head(store, entry), _settings(entry), BATCH_ROWS)
    writer = PredictionWriter(store, entry.version, new_run_id())
    abstained = 0
    todo = store.manifest.next_image_id - entry.scored_below_id
    with Progress(todo, "classify", interactive) as progress:
        files, dead = store.live_paths("vectors"), tombstoned_ids(store)
        for batch in score_files(files, scorer, entry.scored_below_id, dead):
            writer.add(batch)
            abstained += int(pc.sum(batch.column("abstained")).as_py() or 0)
            progress.update(batch.num_rows)
    return writer, abstained


def _version(store: Store, label_set: LabelSet, model: ModelSpec | None) -> _Version:
    """The stored entry of this label-set version, or a new one (its files staged)."""
    version, located = example_version(store, label_set)
    entry = store.manifest.label_set(version)
    if entry is not None:
        return _Version(entry, new=False)
    return _new_version(store, label_set, version, located, model)


def _new_version(
    store: Store,
    label_set: LabelSet,
    version: str,
    located: LocatedExamples | None,
    model: ModelSpec | None,
) -> _Version:
    """Encode the prompts with the store's model once (a few-shot set: fit its head to
    the examples); the matrix and examples are staged for the commit."""
    loaded = load_verified(store.model_source, store.identity, store.root, model)
    text, scale = label_matrix(loaded, label_set), resolve_scale(loaded, label_set)
    few_shot = None
    if located is not None:
        few_shot = few_shot_head(
            ExampleCache(store), label_set, located, text, FIT_SCALE, lambda: loaded
        )
    head = few_shot.head if few_shot is not None else text_head(text)
    prompts = [list(label.prompts) for label in label_set.labels]
    relpath = write_label_matrix(
        store, version, label_set.label_ids, prompts, head.weights, head.bias
    )
    entry = _entry(label_set, version, relpath, scale)
    if few_shot is not None:
        examples = write_examples(store, version, entry.labels, few_shot.examples)
        entry = replace(entry, mode=label_set.mode, examples=examples, few_shot=few_shot.fit)
    return _Version(entry, new=True, head=head)


def _entry(label_set: LabelSet, version: str, matrix: str, scale: float) -> LabelSetEntry:
    return LabelSetEntry(
        name=label_set.name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        labels=tuple(label_set.label_ids),
        templates=label_set.templates,
        logit_scale=scale,
        logit_scale_setting=label_set.logit_scale,
        top_k=label_set.top_k,
        min_prob=label_set.abstain.min_prob,
        min_margin=label_set.abstain.min_margin,
        matrix=matrix,
        label_min_probs=label_set.label_min_probs if _has_own(label_set) else None,
    )


def _has_own(label_set: LabelSet) -> bool:
    return any(label.min_prob is not None for label in label_set.labels)


def _settings(entry: LabelSetEntry) -> ScoreSettings:
    return ScoreSettings(
        label_set=entry.name,
        version=entry.version,
        label_ids=entry.labels,
        scale=float(entry.logit_scale),
        top_k=int(entry.top_k),
        min_prob=float(entry.min_prob),
        min_margin=float(entry.min_margin),
        label_min_probs=tuple(entry.label_min_probs or ()),
    )


def _commit_label_set(
    store: Store, version: _Version, parts: list[str], make_current: bool
) -> None:
    entry = version.entry
    own = [entry.matrix, *([entry.examples] if entry.examples else [])]
    staged = [*parts, *own] if version.new else parts
    updated = replace(
        entry,
        parts=(*entry.parts, *parts),
        scored_below_id=store.manifest.next_image_id,
        classified_at=datetime.now(UTC).isoformat(timespec="microseconds"),
    )
    others = [e for e in store.manifest.label_sets if e.version != entry.version]
    manifest = after_classify(
        next_manifest(store, label_sets=(*others, updated)), updated, make_current
    )
    commit(store, manifest, staged, None)
