"""`encode`: bring a store up to date with an image folder.

lock -> open the store (the model only when needed) -> scan -> changes -> the encode
loop (decode + model) -> write rows and failures -> index -> commit every
``commit_every`` images, the index and the run record with the last -> catalog.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import faiss
import numpy as np

from meter_batch import __version__, faults
from meter_batch.config import EncodeConfig
from meter_batch.errors import ConfigError, InputError
from meter_batch.ingest.changes import Plan, plan_changes
from meter_batch.ingest.decode import DecodedBatch, split_preprocess
from meter_batch.ingest.encode_loop import (
    LoopPlan,
    LoopReport,
    LoopWork,
    decode_options,
    encoded_batches,
)
from meter_batch.ingest.scan import WorkList, collect_work
from meter_batch.ingest.thumbnails import ThumbnailSource, make_thumbnails
from meter_batch.model.encoder import DevicePlan, plan_device
from meter_batch.model.identity import model_source
from meter_batch.model.loading import LoadedModel, load_model, load_verified
from meter_batch.progress import Progress
from meter_batch.store.catalog import catalog_is_current, refresh_catalog
from meter_batch.store.commit import (
    Store,
    commit,
    locked,
    next_manifest,
    open_existing,
    open_for_write,
    staged_path,
    update_model_source,
)
from meter_batch.store.index import (
    add_embeddings,
    open_index,
    reconcile_index,
    remove_ids,
    save_index,
)
from meter_batch.store.layout import STORE_FILE, index_file, new_run_id
from meter_batch.store.read import fetch_rows
from meter_batch.store.records import (
    FailureKind,
    FailureRecord,
    RunCounts,
    RunRecord,
    Tombstone,
    TombstoneReason,
    counts_of,
    ordered_fields,
)
from meter_batch.store.thumbnails import Thumbnail, cached_hashes, stage_thumbnails
from meter_batch.store.write import ImageRows, RunWriter

log = logging.getLogger("meter_batch")


@dataclass(frozen=True, kw_only=True)
class RunSummary(RunCounts):
    """What `encode` returns, and the CLI prints as one JSON line."""

    FIRST: ClassVar[tuple[str, ...]] = ("run_id", "store")
    run_id: str
    store: str
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
    thumbnails: int = 0  # made and committed by --thumbnails

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {name: data[name] for name in ordered_fields(type(self))}


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
            run.execute(loaded or _store_model(store, config), interactive, started)
    return run.summary(time.monotonic() - started)


def _store_model(store: Store, config: EncodeConfig) -> LoadedModel:
    return load_verified(store.model_source, store.identity, store.root, config.model)


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
        self.pending_supersedes: list[Tombstone] = []
        self.jpeg_on_device = False
        self.report = LoopReport()
        # --thumbnails: those the workers made, and the files of the others (decoded on
        # the GPU), which are read again after the run's commit
        self.thumbnails_decoded: dict[bytes, Thumbnail] = {}
        self.thumbnail_sources: list[ThumbnailSource] = []
        self.thumbnails_made = 0

    def execute(self, loaded: LoadedModel, interactive: bool | None, started: float) -> None:
        device = plan_device(self.config.device, self.config.precision)
        stage = split_preprocess(loaded.reference_preprocess)
        options = decode_options(self.config, loaded, stage, device)
        self.jpeg_on_device = options.jpeg_on_device
        index = reconcile_index(self.store, open_index(self.store))
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
            plan = LoopPlan(stage, options, device)
            batches = encoded_batches(self.config, loaded, plan, self._todo(), self.report)
            for batch, embeddings in batches:
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
        if self.config.thumbnails:
            self._commit_thumbnails(interactive)

    def _keep_thumbnails(self, batch: DecodedBatch) -> None:
        root = self.config.images_dir
        for position, decoded in zip(batch.indices, batch.good, strict=True):
            if decoded.thumbnail is not None:
                self.thumbnails_decoded[decoded.content_hash] = decoded.thumbnail
            else:
                file = root / os.fsdecode(self.work.relpath(position))
                self.thumbnail_sources.append(ThumbnailSource(decoded.content_hash, file))

    def _commit_thumbnails(self, interactive: bool | None) -> None:
        """The thumbnails of this run's images the store has not got (their own commit,
        after the run's: a crash here loses thumbnails only, never a row)."""
        stored = cached_hashes(self.store)
        ready = {h: t for h, t in self.thumbnails_decoded.items() if h not in stored}
        todo = {
            s.content_hash: s
            for s in self.thumbnail_sources
            if s.content_hash not in stored and s.content_hash not in ready
        }
        made = [*ready.values(), *make_thumbnails(list(todo.values()), interactive)]
        if made:
            relpath = stage_thumbnails(self.store, self.run_id, made)
            parts = (*self.store.manifest.thumbnail_parts, relpath)
            commit(self.store, next_manifest(self.store, thumbnail_parts=parts), [relpath], None)
            refresh_catalog(self.store)
        self.thumbnails_made = len(made)

    def _stored(self, relpath: bytes) -> bytes:
        return self.prefix + relpath

    def _todo(self) -> LoopWork:
        return LoopWork(self.work, self.changes.encode)

    def _superseded(self, position: int, old_id: int) -> None:
        relpath = self._stored(self.work.relpath(position))
        self.pending_supersedes.append(Tombstone(relpath, old_id, TombstoneReason.SUPERSEDED))

    def _add_batch(
        self, batch: DecodedBatch, embeddings: np.ndarray | None, index: faiss.IndexIDMap2
    ) -> None:
        failures = [
            _failure(self.work, d.index, d.kind, d.message, self.prefix)
            for d in batch.failures
            if d.kind is not None
        ]
        self.writer.add_failures(failures)
        if embeddings is not None:
            ids = self.writer.add_images(_rows(self.work, batch, embeddings, self.prefix))
            add_embeddings(index, ids, embeddings)
            if self.config.thumbnails:
                self._keep_thumbnails(batch)
        for position in [*batch.indices, *(d.index for d in batch.failures)]:
            old = self.changes.supersedes.get(position)
            if old is not None:
                self._superseded(position, old)

    def _carry_touched(self, index: faiss.IndexIDMap2) -> None:
        """Same content under a new mtime: a new row with the old embedding, no decoding."""
        positions = sorted(self.changes.touched)
        old_rows = fetch_rows(self.store, [self.changes.touched[p].old_id for p in positions])
        for position in positions:
            touched = self.changes.touched[position]
            old = old_rows[touched.old_id]
            embedding = np.asarray(old.embedding, dtype=np.float16)[None, :]
            rows = ImageRows(
                relpaths=[self._stored(self.work.relpath(position))],
                sizes=self.work.sizes[[position]],
                mtimes_ns=self.work.mtimes_ns[[position]],
                widths=[old.width],
                heights=[old.height],
                frames=[old.frames],
                hashes=[touched.content_hash],
                embeddings=embedding,
            )
            add_embeddings(index, self.writer.add_images(rows), embedding)
            self._superseded(position, touched.old_id)

    def _delete(self, index: faiss.IndexIDMap2) -> None:
        deleted, resolved = TombstoneReason.DELETED, TombstoneReason.RESOLVED
        records = [
            Tombstone(self._stored(g.relpath), g.image_id, deleted) for g in self.changes.deleted
        ]
        records += [Tombstone(self._stored(p), None, resolved) for p in self.changes.cleared]
        self.writer.add_tombstones(records)
        remove_ids(index, [g.image_id for g in self.changes.deleted])

    def _commit(
        self, index: faiss.IndexIDMap2, final: bool, record: RunRecord | None = None
    ) -> None:
        """Commit what is staged. The index is saved only with the final commit: rewriting it
        every few thousand images would cost more than the encoding; a crash leaves it
        behind the parts, and the next run's `reconcile_index` catches it up."""
        self.writer.add_tombstones(self.pending_supersedes)
        remove_ids(index, [t.image_id for t in self.pending_supersedes if t.image_id is not None])
        self.pending_supersedes = []
        staged = self.writer.flush()
        manifest = self.store.manifest
        staged_index, index_relpath = None, manifest.index
        if final:
            index_relpath = index_file(manifest.seq + 1)
            staged_index = staged_path(self.store, index_relpath)
            save_index(index, staged_index)
        updated = next_manifest(
            self.store,
            next_image_id=self.writer.next_image_id,
            embedding_parts=manifest.embedding_parts + staged.embeddings,
            failure_parts=manifest.failure_parts + staged.failures,
            tombstone_parts=manifest.tombstone_parts + staged.tombstones,
            index=index_relpath,
            index_current=final,
            path_prefixes=tuple(sorted({*manifest.path_prefixes, self.config.path_prefix})),
            runs=manifest.runs if record is None else (*manifest.runs, record),
        )
        commit(self.store, updated, staged.files, staged_index)
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
            thumbnails=self.thumbnails_made,
        )


def _check_images_dir(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"images directory not found: {path}")
    if not path.is_dir():
        raise InputError(f"not a directory: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"images directory is not readable: {path}")
    return path.resolve()


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
    work: WorkList, position: int, kind: FailureKind, message: str, prefix: bytes
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
) -> RunRecord:
    return RunRecord(
        **counts_of(run.summary(seconds)),
        run_id=run.run_id,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        images_dir=str(config.images_dir.resolve()),
        path_prefix=config.path_prefix,
        seconds=round(seconds, 3),
        device=str(device.device),
        precision=device.precision,
        preprocess_path="exact" if config.exact else "fast",
        jpeg_decode="device" if run.jpeg_on_device else "workers",
        compile=run.report.compiled,
        meter_batch_version=__version__,
    )


def _check_prefix_use(store: Store, prefix: str) -> None:
    """A store holds either one unprefixed root or only prefixed ones: an unprefixed
    root's walk would otherwise see every prefixed path as deleted."""
    used = set(store.manifest.path_prefixes) | {r.path_prefix for r in store.manifest.runs}
    if used and ((prefix == "" and used - {""}) or (prefix != "" and "" in used)):
        raise ConfigError(
            f"store {store.root} was encoded with path prefixes {sorted(used)}; "
            f"a store holds one unprefixed root or only prefixed roots"
        )
    nested = [p for p in used if p != prefix and (p.startswith(prefix) or prefix.startswith(p))]
    if prefix and nested:
        raise ConfigError(f"path prefix {prefix!r} overlaps {nested[0]!r} already in {store.root}")
