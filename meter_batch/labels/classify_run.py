"""`classify`: score every stored image not yet scored under a label-set version.

label set file -> (first time) the label matrix, from the store's own text encoder ->
the stored vectors x matrix, streamed -> staged prediction parts -> one commit. Never
opens an image: the vectors files are all it reads.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute

from meter_batch.config import ModelSpec
from meter_batch.labels.label_sets import LabelSet, load_label_set
from meter_batch.labels.predictions import PredictionWriter, read_label_matrix, write_label_matrix
from meter_batch.labels.scoring import (
    Scorer,
    ScoreSettings,
    label_matrix,
    resolve_scale,
    score_files,
)
from meter_batch.model.loading import load_verified
from meter_batch.progress import Progress
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import (
    Store,
    commit,
    locked,
    new_run_id,
    next_manifest,
    open_existing,
    open_store,
    staged_path,
)
from meter_batch.store.read import tombstoned_ids
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def classify(
    store_root: Path,
    labels_file: Path,
    model: ModelSpec | None = None,
    interactive: bool | None = None,
) -> ClassifySummary:
    """Score every stored image not yet scored under this label-set version; commit."""
    started = time.monotonic()
    label_set = load_label_set(labels_file)
    open_store(store_root)  # fails clearly (and creates nothing) when it is not a store
    with locked(store_root) as lock:
        store = open_existing(store_root, lock)
        version = label_set.version(store.identity)
        entry = store.label_set_entry(version) or _new_label_set_entry(
            store, label_set, version, model
        )
        run_id = new_run_id()
        scorer = Scorer(read_label_matrix(_matrix_path(store, entry)), _settings(entry), BATCH_ROWS)
        writer = PredictionWriter(store, version, run_id)
        abstained = 0
        todo = store.manifest.next_image_id - entry["scored_below_id"]
        with Progress(todo, "classify", interactive) as progress:
            files = store.live_paths("vectors")
            dead = tombstoned_ids(store)
            for batch in score_files(files, scorer, entry["scored_below_id"], dead):
                writer.add(batch)
                abstained += pc_sum(batch.column("abstained"))
                progress.update(batch.num_rows)
        _commit_label_set(store, entry, writer.finish())
        refresh_catalog(store)
    seconds = time.monotonic() - started
    return ClassifySummary(
        store=str(store_root),
        label_set=label_set.name,
        version=version,
        logit_scale=entry["logit_scale"],
        scored=writer.rows,
        abstained=abstained,
        seconds=round(seconds, 3),
        embeddings_per_s=round(writer.rows / seconds, 1) if seconds > 0 else 0.0,
    )


def _new_label_set_entry(
    store: Store, label_set: LabelSet, version: str, model: ModelSpec | None
) -> dict[str, Any]:
    """Encode the prompts with the store's model once; the matrix is staged for the commit."""
    loaded = load_verified(store.model_source, store.identity, store.root, model)
    matrix = label_matrix(loaded, label_set)
    prompts = [list(label.prompts) for label in label_set.labels]
    relpath = write_label_matrix(store, version, label_set.label_ids, prompts, matrix)
    return {
        "name": label_set.name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "labels": label_set.label_ids,
        "templates": list(label_set.templates),
        "logit_scale": resolve_scale(loaded, label_set),
        "logit_scale_setting": label_set.logit_scale,
        "top_k": label_set.top_k,
        "min_prob": label_set.abstain.min_prob,
        "min_margin": label_set.abstain.min_margin,
        "matrix": relpath,
        "parts": [],
        "scored_below_id": 0,
        "new": True,
    }


def _matrix_path(store: Store, entry: dict[str, Any]) -> Path:
    return staged_path(store, entry["matrix"]) if entry.get("new") else store.path(entry["matrix"])


def _settings(entry: dict[str, Any]) -> ScoreSettings:
    return ScoreSettings(
        label_set=entry["name"],
        version=entry["version"],
        label_ids=tuple(entry["labels"]),
        scale=float(entry["logit_scale"]),
        top_k=int(entry["top_k"]),
        min_prob=float(entry["min_prob"]),
        min_margin=float(entry["min_margin"]),
    )


def _commit_label_set(store: Store, entry: dict[str, Any], parts: list[str]) -> None:
    staged = [*parts, entry["matrix"]] if entry.get("new") else parts
    updated = {k: v for k, v in entry.items() if k != "new"}
    updated["parts"] = [*entry["parts"], *parts]
    updated["scored_below_id"] = store.manifest.next_image_id
    updated["classified_at"] = datetime.now(UTC).isoformat(timespec="microseconds")
    others = [e for e in store.manifest.label_sets if e["version"] != entry["version"]]
    manifest = next_manifest(store, label_sets=(*others, updated))
    commit(store, manifest, staged, None)


def pc_sum(column: Any) -> int:
    return int(pa.compute.sum(column).as_py() or 0)
