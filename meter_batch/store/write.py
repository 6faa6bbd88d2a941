"""An encode run's rows, failures and tombstones -> staged Parquet parts; image ids
are assigned here, by the one process that commits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from meter_batch import faults
from meter_batch.store.commit import Store, staged_path, write_error, write_parquet_staged
from meter_batch.store.layout import Folder, RunPart, run_part, vectors_file
from meter_batch.store.read import embedding_matrix
from meter_batch.store.records import FailureRecord, Tombstone
from meter_batch.store.schema import (
    FAILURES_SCHEMA,
    TOMBSTONES_SCHEMA,
    embedding_type,
    embeddings_schema,
    readable_path,
)
from meter_batch.store.vectors import write_vectors


@dataclass(frozen=True)
class ImageRows:
    """One batch of encoded images, column-wise; ``embeddings`` is (N, D) float16."""

    relpaths: list[bytes]
    sizes: np.ndarray
    mtimes_ns: np.ndarray
    widths: list[int]
    heights: list[int]
    frames: list[int]
    hashes: list[bytes]
    embeddings: np.ndarray


@dataclass(frozen=True)
class StagedParts:
    """What a flush staged: the Parquet parts of each folder, for the manifest, and every
    file (the parts and their vectors files) for the commit to move into place."""

    embeddings: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    tombstones: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


@dataclass
class _Buffer:
    folder: RunPart
    batches: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    parts: int = 0
    staged: list[str] = field(default_factory=list)  # parts since the last flush


class RunWriter:
    """Buffers one run's rows and writes them as staged parts of at most ``part_rows`` rows."""

    def __init__(self, store: Store, run_id: str, first_image_id: int, part_rows: int) -> None:
        self.store, self.run_id, self.part_rows = store, run_id, part_rows
        self.next_image_id = first_image_id
        self.dim = store.identity.embed_dim
        self.schema = embeddings_schema(self.dim)
        self.staged: list[str] = []
        self.encoded = self.failed = 0
        self._images = _Buffer(Folder.EMBEDDINGS)
        self._failures = _Buffer(Folder.FAILURES)
        self._tombstones = _Buffer(Folder.TOMBSTONES)

    def add_images(self, rows: ImageRows) -> np.ndarray:
        """Stage one batch; returns the image ids it was given."""
        count = len(rows.relpaths)
        ids = np.arange(self.next_image_id, self.next_image_id + count, dtype=np.int64)
        self.next_image_id += count
        self.encoded += count
        self._append(self._images, self._image_batch(ids, rows))
        return ids

    def add_failures(self, records: list[FailureRecord]) -> None:
        if records:
            self.failed += len(records)
            self._append(self._failures, self._failure_batch(records))

    def add_tombstones(self, records: list[Tombstone]) -> None:
        if records:
            self._append(self._tombstones, self._tombstone_batch(records))

    def flush(self) -> StagedParts:
        """Write everything buffered; what was staged since the last flush, for a commit."""
        self._flush(self._images, self.schema)
        self._flush(self._failures, FAILURES_SCHEMA)
        self._flush(self._tombstones, TOMBSTONES_SCHEMA)
        staged = StagedParts(
            embeddings=tuple(self._images.staged),
            failures=tuple(self._failures.staged),
            tombstones=tuple(self._tombstones.staged),
            files=tuple(self.staged),
        )
        self.staged = []
        for buffer in (self._images, self._failures, self._tombstones):
            buffer.staged = []
        return staged

    def _append(self, buffer: _Buffer, batch: pa.RecordBatch) -> None:
        buffer.batches.append(batch)
        buffer.rows += batch.num_rows
        if buffer.rows >= self.part_rows:
            self._flush(buffer, batch.schema)

    def _flush(self, buffer: _Buffer, schema: pa.Schema) -> None:
        if not buffer.rows:
            return
        relpath = run_part(buffer.folder, self.run_id, buffer.parts)
        table = pa.Table.from_batches(buffer.batches, schema)
        write_parquet_staged(self.store, table, relpath)
        buffer.staged.append(relpath)
        self.staged.append(relpath)
        if buffer.folder == Folder.EMBEDDINGS:
            self.staged.append(write_vectors_staged(self.store, table, relpath))
        buffer.batches, buffer.rows, buffer.parts = [], 0, buffer.parts + 1

    def _image_batch(self, ids: np.ndarray, rows: ImageRows) -> pa.RecordBatch:
        paths = [readable_path(p) for p in rows.relpaths]
        flat = pa.array(np.ascontiguousarray(rows.embeddings, dtype=np.float16).reshape(-1))
        columns = [
            pa.array(ids, pa.int64()),
            pa.array([p for p, _ in paths], pa.string()),
            pa.array([raw for _, raw in paths], pa.binary()),
            pa.array(rows.sizes, pa.int64()),
            pa.array(rows.mtimes_ns, pa.int64()),
            pa.array(rows.widths, pa.int32()),
            pa.array(rows.heights, pa.int32()),
            pa.array(rows.frames, pa.int32()),
            pa.array(rows.hashes, self.schema.field("content_hash").type),
            pa.array([self.run_id] * len(ids), pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, type=embedding_type(self.dim)),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _tombstone_batch(self, records: list[Tombstone]) -> pa.RecordBatch:
        paths = [readable_path(r.relpath) for r in records]
        columns = [
            pa.array([r.image_id for r in records], pa.int64()),
            pa.array([p for p, _ in paths], pa.string()),
            pa.array([raw for _, raw in paths], pa.binary()),
            pa.array([r.reason.value for r in records], pa.string()),
            pa.array([self.run_id] * len(records), pa.string()),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=TOMBSTONES_SCHEMA)

    def _failure_batch(self, records: list[FailureRecord]) -> pa.RecordBatch:
        paths = [readable_path(r.relpath) for r in records]
        columns = [
            pa.array([p for p, _ in paths], pa.string()),
            pa.array([raw for _, raw in paths], pa.binary()),
            pa.array([r.size for r in records], pa.int64()),
            pa.array([r.mtime_ns for r in records], pa.int64()),
            pa.array([r.kind.stored for r in records], pa.string()),
            pa.array([r.message for r in records], pa.string()),
            pa.array([self.run_id] * len(records), pa.string()),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=FAILURES_SCHEMA)


def write_vectors_staged(store: Store, table: pa.Table, parquet_relpath: str) -> str:
    """Stage the scoring copy of a part's embeddings; returns its final relative path."""
    relpath = vectors_file(parquet_relpath)
    ids = table.column("image_id").to_numpy()
    try:
        write_vectors(staged_path(store, relpath), ids, embedding_matrix(table))
        faults.point("vectors")
    except OSError as exc:
        raise write_error(store.root / relpath, exc) from exc
    return relpath
