"""Where the stages meet: scan -> decode -> encode -> write -> index -> commit."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute
import torch

from meter_batch import __version__
from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.decode import (
    DEFAULT_MAX_PIXELS,
    DecodedBatch,
    ImageFiles,
    collate_decoded,
    configure_decoder_process,
    split_preprocess,
    worker_init,
)
from meter_batch.encode import DevicePlan, ImageEncoder, plan_device
from meter_batch.errors import InputError, ModelMismatchError
from meter_batch.index import add_embeddings, load_index, new_index, save_index
from meter_batch.labels import LabelSet, label_matrix, load_label_set, resolve_scale
from meter_batch.model import LoadedModel, load_model
from meter_batch.progress import Progress
from meter_batch.scan import WorkList, collect_work
from meter_batch.score import Scorer, ScoreSettings, score_files
from meter_batch.store import (
    Store,
    commit,
    locked,
    next_manifest,
    open_existing,
    open_for_write,
    open_store,
    staged_path,
)
from meter_batch.vectors import BATCH_ROWS
from meter_batch.views import refresh_catalog
from meter_batch.write import (
    FailureRecord,
    ImageRows,
    PredictionWriter,
    RunWriter,
    read_label_matrix,
    write_label_matrix,
)

log = logging.getLogger("meter_batch")


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    store: str
    scanned: int
    encoded: int
    failed: int
    seconds: float
    images_per_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def encode(config: EncodeConfig, interactive: bool | None = None) -> RunSummary:
    """Encode every image under ``config.images_dir`` into ``config.store`` and commit."""
    started = time.monotonic()
    root = _check_images_dir(config.images_dir)
    with locked(config.store) as lock:
        loaded = load_model(config.model)
        store = open_for_write(config.store, loaded.identity, model_source(config.model), lock)
        plan = plan_device(config.device, config.precision)
        log.info("scanning %s", root)
        work = collect_work(root)
        run_id = new_run_id()
        writer = RunWriter(store, run_id, store.manifest.next_image_id, config.part_rows)
        writer.add_failures([FailureRecord(f.relpath, f.kind, f.message) for f in work.failures])
        index = _open_index(store)
        with Progress(len(work), "encode", interactive) as progress:
            _encode_work(config, loaded, plan, work, writer, index, progress)
        staged = writer.finish()
        seconds = time.monotonic() - started
        record = _run_record(config, plan, run_id, work, writer, seconds)
        _commit_run(store, writer, staged, index, record)
        refresh_catalog(store)
    return RunSummary(
        run_id=run_id,
        store=str(config.store),
        scanned=len(work) + len(work.failures),
        encoded=writer.encoded,
        failed=writer.failed,
        seconds=round(seconds, 3),
        images_per_s=round(writer.encoded / seconds, 2) if seconds > 0 else 0.0,
    )


def _check_images_dir(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"images directory not found: {path}")
    if not path.is_dir():
        raise InputError(f"not a directory: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"images directory is not readable: {path}")
    return path.resolve()


def model_source(spec: ModelSpec) -> dict[str, Any]:
    """How to load the store's model again later (classify, search), as absolute paths."""

    def absolute(value: str) -> str:
        return (
            str(Path(value).expanduser().resolve()) if Path(value).expanduser().exists() else value
        )

    return {"name": absolute(spec.name), "pretrained": absolute(spec.pretrained), "seed": spec.seed}


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _open_index(store: Store) -> faiss.IndexIDMap2:
    if store.manifest.index:
        return load_index(store.path(store.manifest.index))
    return new_index(store.identity.embed_dim)


def _encode_work(
    config: EncodeConfig,
    loaded: LoadedModel,
    plan: DevicePlan,
    work: WorkList,
    writer: RunWriter,
    index: faiss.IndexIDMap2,
    progress: Progress,
) -> None:
    if not len(work):
        return
    stage = split_preprocess(loaded.reference_preprocess)
    encoder = ImageEncoder(loaded.model, stage.mean, stage.std, plan)
    dataset = ImageFiles(
        os.fsencode(config.images_dir.resolve()), work, stage.transform, DEFAULT_MAX_PIXELS
    )
    for batch in _loader(dataset, config, plan):
        writer.add_failures(
            [_failure(work, d.index, d.kind or "", d.message) for d in batch.failures]
        )
        if batch.indices:
            embeddings = encoder(batch.pixels)
            ids = writer.add_images(_rows(work, batch, embeddings))
            add_embeddings(index, ids, embeddings)
        progress.update(len(batch.indices) + len(batch.failures))


def _loader(dataset: ImageFiles, config: EncodeConfig, plan: DevicePlan) -> Any:
    workers = config.workers
    if workers == 0:
        configure_decoder_process(in_worker=False)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_decoded,
        pin_memory=plan.is_cuda,
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None,
    )


def _rows(work: WorkList, batch: DecodedBatch, embeddings: np.ndarray) -> ImageRows:
    positions = np.asarray(batch.indices, dtype=np.int64)
    return ImageRows(
        relpaths=[work.relpath(i) for i in batch.indices],
        sizes=work.sizes[positions],
        mtimes_ns=work.mtimes_ns[positions],
        widths=batch.widths,
        heights=batch.heights,
        hashes=batch.hashes,
        embeddings=embeddings,
    )


def _failure(work: WorkList, position: int, kind: str, message: str) -> FailureRecord:
    return FailureRecord(
        work.relpath(position),
        kind,
        message,
        int(work.sizes[position]),
        int(work.mtimes_ns[position]),
    )


def _run_record(
    config: EncodeConfig,
    plan: DevicePlan,
    run_id: str,
    work: WorkList,
    writer: RunWriter,
    seconds: float,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "images_dir": str(config.images_dir.resolve()),
        "scanned": len(work) + len(work.failures),
        "encoded": writer.encoded,
        "failed": writer.failed,
        "seconds": round(seconds, 3),
        "device": str(plan.device),
        "precision": plan.precision,
        "preprocess_path": "exact",
        "meter_batch_version": __version__,
    }


def _commit_run(
    store: Store,
    writer: RunWriter,
    staged: list[str],
    index: faiss.IndexIDMap2,
    record: dict[str, Any],
) -> None:
    seq = store.manifest.seq + 1
    index_relpath = f"index/{seq:012d}.faiss"
    staged_index = store.path("staging") / f"{seq:012d}.faiss"
    save_index(index, staged_index)
    new_parts = [p for p in staged if p.startswith("embeddings/") and p.endswith(".parquet")]
    new_failures = [p for p in staged if p.startswith("failures/")]
    manifest = next_manifest(
        store,
        next_image_id=writer.next_image_id,
        embedding_parts=store.manifest.embedding_parts + tuple(new_parts),
        failure_parts=store.manifest.failure_parts + tuple(new_failures),
        index=index_relpath,
        runs=(*store.manifest.runs, record),
    )
    commit(store, manifest, staged, staged_index)


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
            for batch in score_files(store.live_paths("vectors"), scorer, entry["scored_below_id"]):
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


def load_store_model(store: Store, override: ModelSpec | None = None) -> LoadedModel:
    """The store's own model (or ``override``, e.g. after moving the checkpoint), verified."""
    source = store.model_source
    spec = override or ModelSpec(source["name"], source["pretrained"], source.get("seed", 0))
    loaded = load_model(spec)
    problems = loaded.identity.differences(store.identity)
    if problems:
        raise ModelMismatchError(
            f"the model at {spec.name} / {spec.pretrained} is not the one that wrote {store.root} "
            f"({'; '.join(problems)}); pass the store's model with --model/--pretrained"
        )
    return loaded


def _new_label_set_entry(
    store: Store, label_set: LabelSet, version: str, model: ModelSpec | None
) -> dict[str, Any]:
    """Encode the prompts with the store's model once; the matrix is staged for the commit."""
    loaded = load_store_model(store, model)
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
    others = [e for e in store.manifest.label_sets if e["version"] != entry["version"]]
    manifest = next_manifest(store, label_sets=(*others, updated))
    commit(store, manifest, staged, None)


def pc_sum(column: Any) -> int:
    return int(pa.compute.sum(column).as_py() or 0)
