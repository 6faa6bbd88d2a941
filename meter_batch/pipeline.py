"""Where the stages meet: scan -> decode -> encode -> write -> index -> commit."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import torch

from meter_batch import __version__, faults
from meter_batch.changes import Plan, fetch_rows, plan_changes, tombstoned_ids
from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.decode import (
    DecodedBatch,
    DecodeOptions,
    ImageFiles,
    PixelStage,
    split_preprocess,
)
from meter_batch.encode import DevicePlan, ImageEncoder, plan_device
from meter_batch.errors import ConfigError, InputError, ModelError, ModelMismatchError
from meter_batch.gpu_decode import (
    RESIZE_MODES,
    DeviceJpegDecoder,
    device_jpeg_decoder_available,
)
from meter_batch.index import (
    add_embeddings,
    index_ids,
    load_index,
    new_index,
    remove_ids,
    save_index,
)
from meter_batch.labels import LabelSet, label_matrix, load_label_set, resolve_scale
from meter_batch.model import LoadedModel, load_model
from meter_batch.progress import Progress
from meter_batch.scan import WorkList, collect_work
from meter_batch.score import Scorer, ScoreSettings, score_files
from meter_batch.store import (
    STORE_FILE,
    Store,
    commit,
    locked,
    next_manifest,
    open_existing,
    open_for_write,
    open_store,
    staged_path,
    update_model_source,
)
from meter_batch.vectors import BATCH_ROWS, iter_vectors, prefetch
from meter_batch.views import catalog_is_current, refresh_catalog
from meter_batch.workers import LoaderSettings, decoded_batches, isolated_decode
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
    skipped: int
    touched: int
    superseded: int
    deleted: int
    commits: int
    seconds: float
    images_per_s: float
    pipeline_seconds: float  # the decode -> encode -> write -> commit part of `seconds`
    # where the main thread spent pipeline_seconds: waiting for decoded batches, running the
    # model, writing and committing; the largest names the stage that limits the run
    stage_seconds: dict[str, float] = field(default_factory=dict)
    compiled: bool = False  # the model ran torch.compile'd (--compile, when it applied)
    # with JPEGs decoded on the GPU, where the decoder thread spent its time: waiting for
    # the workers' bytes, decoding (nvjpeg + resize) while the model ran, and waiting for
    # the model to take decoded batches; empty when the workers decode everything
    decoder_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


STAGES = ("start", "waiting_for_decode", "model", "writes")  # the main thread's
DECODER_STAGES = ("waiting_for_workers", "device_decode", "waiting_for_model")  # GPU decoder's


@dataclass
class LoopReport:
    """What the encode loop reports: seconds its main thread spent per stage (and the GPU
    decoder thread, when JPEGs are decoded there), and whether the model ran compiled
    (asked for, enough images, and compiling worked)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    decoder_seconds: dict[str, float] = field(default_factory=dict)
    compiled: bool = False

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        """Adds the block's seconds to ``stage``: a main-thread stage or a decoder one."""
        if stage not in STAGES and stage not in DECODER_STAGES:
            raise ValueError(f"no stage {stage!r}")  # a typo must not vanish from the report
        clock = self.seconds if stage in STAGES else self.decoder_seconds
        started = time.perf_counter()
        try:
            yield
        finally:
            clock[stage] = clock.get(stage, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {stage: round(value, 3) for stage, value in self.seconds.items()}

    def decoder_rounded(self) -> dict[str, float]:
        return {stage: round(value, 3) for stage, value in self.decoder_seconds.items()}


def encode(config: EncodeConfig, interactive: bool | None = None) -> RunSummary:
    """Bring ``config.store`` up to date with ``config.images_dir``: new and changed files
    are encoded, deleted ones tombstoned; a commit every ``commit_every`` images."""
    started = time.monotonic()
    root = _check_images_dir(config.images_dir)
    if config.device == "cuda" or config.precision == "fp16":  # can fail: before store.json
        plan_device(config.device, config.precision)
    with locked(config.store) as lock:
        faults.point("locked")
        store, loaded = _open_for_encode(config, lock)
        _check_prefix_use(store, config.path_prefix)
        if store.manifest.seq and not catalog_is_current(store):
            refresh_catalog(store)  # the last run died between its commit and the catalog
        log.info("scanning %s", root)
        work = collect_work(root)
        faults.point("scan")
        prefix = config.path_prefix.encode("utf-8")
        changes = plan_changes(root, work, store, prefix)
        run = _EncodeRun(config, store, work, changes, new_run_id())
        if not changes.empty or not store.manifest.runs or not store.manifest.index_current:
            run.execute(loaded or load_store_model(store, config.model), interactive, started)
    return run.summary(time.monotonic() - started)


def _open_for_encode(config: EncodeConfig, lock: BinaryIO) -> tuple[Store, LoadedModel | None]:
    """The store, and the model when it had to be loaded to check or create the store.

    A store whose recorded model source equals the request defers loading the model
    until there is something to encode: a no-change nightly run costs only stat calls.
    """
    source = model_source(config.model)
    if (config.store / STORE_FILE).exists():
        store = open_existing(config.store, lock)
        if store.model_source == source:
            return store, None
    loaded = load_model(config.model)
    store = open_for_write(config.store, loaded.identity, source, lock)
    if store.model_source != source:
        update_model_source(store, source)  # same model, moved: remember where it is now
    return store, loaded


class _EncodeRun:
    """One encode run's state: what to do, the writer, the index, the counters."""

    def __init__(
        self, config: EncodeConfig, store: Store, work: WorkList, changes: Plan, run_id: str
    ) -> None:
        self.config, self.store, self.work, self.changes = config, store, work, changes
        self.run_id = run_id
        self.prefix = config.path_prefix.encode("utf-8")
        self.writer = RunWriter(store, run_id, store.manifest.next_image_id, config.part_rows)
        self.commits = 0
        self.loop_seconds = 0.0  # decode + encode + writes + commits, without model load / scan
        self.pending_supersedes: list[tuple[bytes, int | None, str]] = []
        self.jpeg_on_device = False
        self.report = LoopReport()

    def execute(self, loaded: LoadedModel, interactive: bool | None, started: float) -> None:
        device = plan_device(self.config.device, self.config.precision)
        stage = split_preprocess(loaded.reference_preprocess)
        options = decode_options(self.config, loaded, stage, device)
        self.jpeg_on_device = options.jpeg_on_device
        index = reconcile_index(self.store, _open_index(self.store))
        standing = self.changes.standing
        self.writer.add_failures(  # unreadable folders: recorded once, not every night
            [
                FailureRecord(self._stored(f.relpath), f.kind, f.message)
                for f in self.work.failures
                if f.relpath not in standing or standing[f.relpath].size is not None
            ]
        )
        self._carry_touched(index)
        loop_started = time.monotonic()
        with Progress(len(self.changes.encode), "encode", interactive) as progress:
            for batch, embeddings in _encoded_batches(
                self.config,
                loaded,
                (stage, options, device),
                (self.work, self.changes.encode),
                self.report,
            ):
                with self.report.timing("writes"):
                    self._add_batch(batch, embeddings, index)
                progress.update(len(batch.indices) + len(batch.failures))
                faults.point("batch")
                if (
                    self.writer.encoded + self.writer.failed
                    >= (self.commits + 1) * self.config.commit_every
                ):
                    with self.report.timing("writes"):
                        self._commit(index, final=False)
        with self.report.timing("writes"):
            self._delete(index)
            record = _run_record(self.config, device, self, time.monotonic() - started)
            self._commit(index, final=True, record=record)
        self.loop_seconds = time.monotonic() - loop_started

    def _stored(self, relpath: bytes) -> bytes:
        return self.prefix + relpath

    def _add_batch(
        self, batch: DecodedBatch, embeddings: np.ndarray | None, index: faiss.IndexIDMap2
    ) -> None:
        failures = [
            _failure(self.work, d.index, d.kind or "", d.message, self.prefix)
            for d in batch.failures
        ]
        self.writer.add_failures(failures)
        if embeddings is not None:
            ids = self.writer.add_images(_rows(self.work, batch, embeddings, self.prefix))
            add_embeddings(index, ids, embeddings)
        for position in [*batch.indices, *(d.index for d in batch.failures)]:
            old = self.changes.supersedes.get(position)
            if old is not None:
                self.pending_supersedes.append(
                    (self._stored(self.work.relpath(position)), old, "superseded")
                )

    def _carry_touched(self, index: faiss.IndexIDMap2) -> None:
        """Same content under a new mtime: a new row with the old embedding, no decoding."""
        positions = sorted(self.changes.touched)
        old_rows = fetch_rows(self.store, [self.changes.touched[p][0] for p in positions])
        for position in positions:
            old_id, digest = self.changes.touched[position]
            row = old_rows[old_id]
            embedding = np.asarray(row["embedding"], dtype=np.float16)[None, :]
            rows = ImageRows(
                relpaths=[self._stored(self.work.relpath(position))],
                sizes=self.work.sizes[[position]],
                mtimes_ns=self.work.mtimes_ns[[position]],
                widths=[int(row["width"])],  # type: ignore[call-overload]
                heights=[int(row["height"])],  # type: ignore[call-overload]
                frames=[int(row["frames"])],  # type: ignore[call-overload]
                hashes=[digest],
                embeddings=embedding,
            )
            add_embeddings(index, self.writer.add_images(rows), embedding)
            self.pending_supersedes.append((rows.relpaths[0], old_id, "superseded"))

    def _delete(self, index: faiss.IndexIDMap2) -> None:
        records = [(self._stored(p), image_id, "deleted") for p, image_id in self.changes.deleted]
        records += [(self._stored(p), None, "resolved") for p in self.changes.cleared]
        self.writer.add_tombstones(records)
        remove_ids(index, [image_id for _, image_id, _ in records if image_id is not None])

    def _commit(
        self, index: faiss.IndexIDMap2, final: bool, record: dict[str, Any] | None = None
    ) -> None:
        """Commit what is staged. The index is saved only with the final commit: rewriting it
        every few thousand images would cost more than the encoding; a crash leaves it
        behind the parts, and the next run's `reconcile_index` catches it up."""
        self.writer.add_tombstones(self.pending_supersedes)
        remove_ids(
            index, [image_id for _, image_id, _ in self.pending_supersedes if image_id is not None]
        )
        self.pending_supersedes = []
        staged = self.writer.flush()
        manifest = self.store.manifest
        seq = manifest.seq + 1
        index_file, index_relpath = None, manifest.index
        if final:
            index_relpath = f"index/{seq:012d}.faiss"
            index_file = self.store.path("staging") / f"{seq:012d}.faiss"
            save_index(index, index_file)
        changes: dict[str, Any] = {
            "next_image_id": self.writer.next_image_id,
            "embedding_parts": manifest.embedding_parts + _of(staged, "embeddings/"),
            "failure_parts": manifest.failure_parts + _of(staged, "failures/"),
            "tombstone_parts": manifest.tombstone_parts + _of(staged, "tombstones/"),
            "index": index_relpath,
            "index_current": final,
            "path_prefixes": tuple(sorted({*manifest.path_prefixes, self.config.path_prefix})),
        }
        if record is not None:
            changes["runs"] = (*manifest.runs, record)
        commit(self.store, next_manifest(self.store, **changes), staged, index_file)
        self.commits += 1
        refresh_catalog(self.store)  # analysts see a long run's progress; an interrupted
        # first run can be queried

    def summary(self, seconds: float) -> RunSummary:
        encoded = self.writer.encoded - len(self.changes.touched)
        return RunSummary(
            run_id=self.run_id,
            store=str(self.config.store),
            scanned=len(self.work) + len(self.work.failures),
            encoded=encoded,
            failed=self.writer.failed,
            skipped=self.changes.skipped,
            touched=len(self.changes.touched),
            superseded=len(self.changes.supersedes),
            deleted=len(self.changes.deleted),
            commits=self.commits,
            seconds=round(seconds, 3),
            images_per_s=round(encoded / seconds, 2) if seconds > 0 else 0.0,
            pipeline_seconds=round(self.loop_seconds, 3),
            stage_seconds=self.report.rounded(),
            compiled=self.report.compiled,
            decoder_seconds=self.report.decoder_rounded(),
        )


def _of(staged: list[str], folder: str) -> tuple[str, ...]:
    return tuple(p for p in staged if p.startswith(folder) and p.endswith(".parquet"))


def reconcile_index(store: Store, index: faiss.IndexIDMap2) -> faiss.IndexIDMap2:
    """Make the index hold exactly the live rows: after a crash it may lag the parts."""
    live = live_ids(store)
    present = set(index_ids(index).tolist())
    missing = live - present
    remove_ids(index, sorted(present - live))
    if missing:
        log.info("catching the FAISS index up: %d rows", len(missing))
        for path in store.live_paths("vectors"):
            for ids, vectors in iter_vectors(path):
                keep = np.fromiter((i in missing for i in ids.tolist()), dtype=bool, count=len(ids))
                if keep.any():
                    add_embeddings(index, ids[keep], vectors[keep])
    return index


def live_ids(store: Store) -> set[int]:
    dead = tombstoned_ids(store)
    ids: set[int] = set()
    for path in store.live_paths("embeddings"):
        ids.update(pq.read_table(path, columns=["image_id"]).column(0).to_pylist())
    return ids - dead


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
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


def _open_index(store: Store) -> faiss.IndexIDMap2:
    if store.manifest.index:
        return load_index(store.path(store.manifest.index))
    return new_index(store.identity.embed_dim)


def _encoded_batches(
    config: EncodeConfig,
    loaded: LoadedModel,
    how: tuple[PixelStage, DecodeOptions, DevicePlan],
    what: tuple[WorkList, list[int]],
    report: LoopReport,
) -> Iterator[tuple[DecodedBatch, np.ndarray | None]]:
    work, positions = what
    if not positions:
        return
    stage, options, device = how
    folder = os.fsencode(config.images_dir.resolve())
    settings = LoaderSettings(
        config.batch_size, config.workers, device.is_cuda, config.decode_timeout
    )
    batches = decoded_batches(ImageFiles(folder, work, options), positions, settings)
    on_device = _device_decoder(config, (folder, work), stage, options, device)
    with report.timing("start"):  # model to the device and warm, first batch decoded
        encoder, first = _start_concurrently(
            loaded,
            stage,
            device,
            (settings.batch_size, _worth_compiling(config, len(positions))),
            batches,
            on_device if options.jpeg_on_device else None,
        )
    if first is None:
        return
    pending = itertools.chain([first], batches)
    decoded: Iterator[tuple[DecodedBatch, torch.Tensor]] = (on_device(b) for b in pending)
    if options.jpeg_on_device:  # the next batches' GPU decoding overlaps model and writes
        decoded = prefetch(_timed_device_decoding(pending, on_device, report), depth=2)
    yield from _timed_encoding(decoded, encoder, report)


def _timed_device_decoding(
    batches: Iterator[DecodedBatch], on_device: DeviceJpegDecoder, report: LoopReport
) -> Iterator[tuple[DecodedBatch, torch.Tensor]]:
    """The decoder thread's loop, timed: device decoding's rate while the model runs,
    against its rate alone (`bench encode`), says how much the two slow each other."""
    while True:
        with report.timing("waiting_for_workers"):
            batch = next(batches, None)
        if batch is None:
            return
        with report.timing("device_decode"):  # with any rejected JPEG's CPU fallback
            decoded = on_device(batch)
        with report.timing("waiting_for_model"):  # prefetch's queue is full: the model limits
            yield decoded


def _device_decoder(
    config: EncodeConfig,
    files: tuple[bytes, WorkList],
    stage: PixelStage,
    options: DecodeOptions,
    device: DevicePlan,
) -> DeviceJpegDecoder:
    """Moves the workers' pixels to the device, and decodes shipped JPEGs there."""
    cpu_files = ImageFiles(*files, replace(options, jpeg_on_device=False))
    return DeviceJpegDecoder(
        device.device,
        stage.short_side,
        options,
        # a JPEG nvjpeg rejects is odd: decode it where a crash or a hang costs only it
        lambda item: isolated_decode(cpu_files, item.index, config.decode_timeout),
    )


def _timed_encoding(
    decoded: Iterator[tuple[DecodedBatch, torch.Tensor]], encoder: ImageEncoder, report: LoopReport
) -> Iterator[tuple[DecodedBatch, np.ndarray | None]]:
    while True:
        with report.timing("waiting_for_decode"):
            item = next(decoded, None)
        if item is None:
            return
        batch, pixels = item
        with report.timing("model"):
            embeddings = encoder(pixels) if batch.indices else None
        report.compiled = encoder.runs_compiled
        yield batch, embeddings


COMPILE_MIN_BATCHES = 4


def _worth_compiling(config: EncodeConfig, images: int) -> bool:
    """Only full batches run compiled, and compiling costs seconds (cached) to ~20 s
    (cold): a run of a few batches gains nothing from it."""
    if not config.compile:
        return False
    if images >= COMPILE_MIN_BATCHES * config.batch_size:
        return True
    log.info("not compiling: %d images are fewer than %d full batches of %d",
             images, COMPILE_MIN_BATCHES, config.batch_size)  # fmt: skip
    return False


def decode_options(
    config: EncodeConfig, loaded: LoadedModel, stage: PixelStage, device: DevicePlan
) -> DecodeOptions:
    """The fast path's DCT scaling unless exact; JPEGs on the device where that pays."""
    on_device = config.jpeg_decode == "device" or (
        config.jpeg_decode == "auto" and device.is_cuda and not config.exact
    )
    if on_device and not device_decoder_fits(dict(loaded.identity.preprocess)):
        on_device = False
    draft_to = None if config.exact else stage.short_side
    return DecodeOptions(stage.transform, config.max_pixels, draft_to, on_device)


def _start_concurrently(
    loaded: LoadedModel,
    stage: PixelStage,
    device: DevicePlan,
    batch: tuple[int, bool],  # batch size, whether to compile
    batches: Iterator[DecodedBatch],
    decoder: DeviceJpegDecoder | None,  # when it decodes JPEGs: its first call is slow
) -> tuple[ImageEncoder, DecodedBatch | None]:
    """Move the model to the device (and warm a GPU and its JPEG decoder up) while the
    first batch decodes.

    Worker start-up, the first decode, the weight transfer and CUDA's first-call set-up
    each take up to a second; overlapped instead of added, they cost a short run much less.
    """

    def ready() -> ImageEncoder:
        encoder = _ready_encoder(loaded, stage, device, batch)
        if decoder is not None:
            decoder.warm_up()
        return encoder

    with ThreadPoolExecutor(1, thread_name_prefix="model-start") as pool:
        pending = pool.submit(ready)
        first = next(batches, None)
        return pending.result(), first


def device_decoder_fits(cfg: dict[str, Any]) -> bool:
    """Whether gpu_decode reproduces this preprocessing (and torchvision still has it)."""
    size = cfg.get("size", 224)
    square = isinstance(size, int) or len(set(size)) == 1
    mode, interpolation = cfg.get("resize_mode", "shortest"), cfg.get("interpolation", "bicubic")
    fits = square and mode in RESIZE_MODES and interpolation == "bicubic"
    if fits and device_jpeg_decoder_available():
        return True
    log.info(
        "JPEGs are decoded by the workers: the device decoder does not reproduce size %r, "
        "resize_mode %r, interpolation %r, or torchvision has no decode_jpeg",
        size,
        mode,
        interpolation,
    )
    return False


def _ready_encoder(
    loaded: LoadedModel, stage: PixelStage, device: DevicePlan, batch: tuple[int, bool]
) -> ImageEncoder:
    """The encoder, warmed up on a GPU: CUDA's first-call set-up, and compiling when asked.
    (On a CPU a warm-up batch costs as much as a real one: it compiles on the first.)"""
    batch_size, compile_it = batch
    encoder = ImageEncoder(
        loaded.model, stage.mean, stage.std, device, batch_size if compile_it else None
    )
    if device.is_cuda:
        side = stage.short_side
        encoder(torch.zeros((batch_size, side, side, 3), dtype=torch.uint8))
    return encoder


def _rows(work: WorkList, batch: DecodedBatch, embeddings: np.ndarray, prefix: bytes) -> ImageRows:
    good = batch.good
    return ImageRows(
        relpaths=[prefix + work.relpath(i) for i in batch.indices],
        sizes=np.asarray([d.size for d in good], dtype=np.int64),  # as read, not as scanned
        mtimes_ns=np.asarray([d.mtime_ns for d in good], dtype=np.int64),
        widths=[d.width for d in good],
        heights=[d.height for d in good],
        frames=[d.frames for d in good],
        hashes=[d.content_hash for d in good],
        embeddings=embeddings,
    )


def _failure(
    work: WorkList, position: int, kind: str, message: str, prefix: bytes
) -> FailureRecord:
    return FailureRecord(
        prefix + work.relpath(position),
        kind,
        message,
        int(work.sizes[position]),
        int(work.mtimes_ns[position]),
    )


def _run_record(
    config: EncodeConfig, device: DevicePlan, run: _EncodeRun, seconds: float
) -> dict[str, Any]:
    summary = run.summary(seconds)
    return {
        "run_id": run.run_id,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "images_dir": str(config.images_dir.resolve()),
        "path_prefix": config.path_prefix,
        "scanned": summary.scanned,
        "encoded": summary.encoded,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "touched": summary.touched,
        "superseded": summary.superseded,
        "deleted": summary.deleted,
        "seconds": round(seconds, 3),
        "device": str(device.device),
        "precision": device.precision,
        "preprocess_path": "exact" if config.exact else "fast",
        "jpeg_decode": "device" if run.jpeg_on_device else "workers",
        "compile": run.report.compiled,
        "meter_batch_version": __version__,
    }


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


def load_store_model(store: Store, override: ModelSpec | None = None) -> LoadedModel:
    """The store's own model (or ``override``, e.g. after moving the checkpoint), verified."""
    source = store.model_source
    spec = override or ModelSpec(source["name"], source["pretrained"], source.get("seed", 0))
    try:
        loaded = load_model(spec)
    except ModelError as exc:
        if override is not None:
            raise
        raise ModelError(  # the files were moved since the store recorded them
            f"{exc} (the model that wrote {store.root}; if its files moved, pass "
            f"--model/--pretrained with their new paths)"
        ) from exc
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
    updated["classified_at"] = datetime.now(UTC).isoformat(timespec="microseconds")
    others = [e for e in store.manifest.label_sets if e["version"] != entry["version"]]
    manifest = next_manifest(store, label_sets=(*others, updated))
    commit(store, manifest, staged, None)


def pc_sum(column: Any) -> int:
    return int(pa.compute.sum(column).as_py() or 0)


def rebuild_index(store_root: Path) -> int:
    """Recreate the FAISS index from the live vectors (it is derived data); commit it."""
    open_store(store_root)  # a clear error, and nothing created, when it is not a store
    with locked(store_root) as lock:
        store = open_existing(store_root, lock)
        index = reconcile_index(store, new_index(store.identity.embed_dim))
        seq = store.manifest.seq + 1
        staged = store.path("staging") / f"{seq:012d}.faiss"
        save_index(index, staged)
        manifest = next_manifest(store, index=f"index/{seq:012d}.faiss", index_current=True)
        commit(store, manifest, [], staged)
        refresh_catalog(store)
        return int(index.ntotal)


def _check_prefix_use(store: Store, prefix: str) -> None:
    """A store holds either one unprefixed root or only prefixed ones: an unprefixed
    root's walk would otherwise see every prefixed path as deleted."""
    used = set(store.manifest.path_prefixes) | {
        r.get("path_prefix", "") for r in store.manifest.runs
    }
    if used and ((prefix == "" and used - {""}) or (prefix != "" and "" in used)):
        raise ConfigError(
            f"store {store.root} was encoded with path prefixes {sorted(used)}; "
            f"a store holds one unprefixed root or only prefixed roots"
        )
    nested = [p for p in used if p != prefix and (p.startswith(prefix) or prefix.startswith(p))]
    if prefix and nested:
        raise ConfigError(f"path prefix {prefix!r} overlaps {nested[0]!r} already in {store.root}")
