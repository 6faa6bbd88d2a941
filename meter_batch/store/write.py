"""Encoded rows and failure records -> staged Parquet parts, with image ids assigned."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from meter_batch import faults
from meter_batch.store.commit import Store, staged_path, write_error, write_parquet_staged
from meter_batch.store.read import embedding_matrix
from meter_batch.store.schema import (
    FAILURES_SCHEMA,
    TOMBSTONES_SCHEMA,
    embedding_type,
    embeddings_schema,
    readable_path,
)
from meter_batch.store.vectors import vectors_path, write_vectors


@dataclass(frozen=True)
class FailureRecord:
    relpath: bytes
    kind: str
    message: str
    size: int | None = None
    mtime_ns: int | None = None


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


@dataclass
class _Buffer:
    batches: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    parts: int = 0


class RunWriter:
    """Buffers one run's rows and writes them as staged parts of at most ``part_rows`` rows."""

    def __init__(self, store: Store, run_id: str, first_image_id: int, part_rows: int) -> None:
        self.store, self.run_id, self.part_rows = store, run_id, part_rows
        self.next_image_id = first_image_id
        self.dim = store.identity.embed_dim
        self.schema = embeddings_schema(self.dim)
        self.staged: list[str] = []
        self.encoded = self.failed = 0
        self._images, self._failures, self._tombstones = _Buffer(), _Buffer(), _Buffer()

    def add_images(self, rows: ImageRows) -> np.ndarray:
        """Stage one batch; returns the image ids it was given."""
        count = len(rows.relpaths)
        ids = np.arange(self.next_image_id, self.next_image_id + count, dtype=np.int64)
        self.next_image_id += count
        self.encoded += count
        self._append(self._images, self._image_batch(ids, rows), "embeddings")
        return ids

    def add_failures(self, records: list[FailureRecord]) -> None:
        if records:
            self.failed += len(records)
            self._append(self._failures, self._failure_batch(records), "failures")

    def add_tombstones(self, records: list[tuple[bytes, int | None, str]]) -> None:
        """End rows: (relpath, image_id or None for a failure, reason)."""
        if records:
            self._append(self._tombstones, self._tombstone_batch(records), "tombstones")

    def flush(self) -> list[str]:
        """Write everything buffered; the parts staged since the last flush, for a commit."""
        self._flush(self._images, "embeddings", self.schema)
        self._flush(self._failures, "failures", FAILURES_SCHEMA)
        self._flush(self._tombstones, "tombstones", TOMBSTONES_SCHEMA)
        staged, self.staged = self.staged, []
        return staged

    def _append(self, buffer: _Buffer, batch: pa.RecordBatch, kind: str) -> None:
        buffer.batches.append(batch)
        buffer.rows += batch.num_rows
        if buffer.rows >= self.part_rows:
            self._flush(buffer, kind, batch.schema)

    def _flush(self, buffer: _Buffer, kind: str, schema: pa.Schema) -> None:
        if not buffer.rows:
            return
        relpath = f"{kind}/part-{self.run_id}-{buffer.parts:05d}.parquet"
        table = pa.Table.from_batches(buffer.batches, schema)
        write_parquet_staged(self.store, table, relpath)
        self.staged.append(relpath)
        if kind == "embeddings":
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

    def _tombstone_batch(self, records: list[tuple[bytes, int | None, str]]) -> pa.RecordBatch:
        paths = [readable_path(relpath) for relpath, _, _ in records]
        columns = [
            pa.array([image_id for _, image_id, _ in records], pa.int64()),
            pa.array([p for p, _ in paths], pa.string()),
            pa.array([raw for _, raw in paths], pa.binary()),
            pa.array([reason for _, _, reason in records], pa.string()),
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
            pa.array([r.kind for r in records], pa.string()),
            pa.array([r.message for r in records], pa.string()),
            pa.array([self.run_id] * len(records), pa.string()),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=FAILURES_SCHEMA)


def write_vectors_staged(store: Store, table: pa.Table, parquet_relpath: str) -> str:
    """Stage the scoring copy of a part's embeddings; returns its final relative path."""
    relpath = str(vectors_path(Path(parquet_relpath)))
    ids = table.column("image_id").to_numpy()
    try:
        write_vectors(staged_path(store, relpath), ids, embedding_matrix(table))
        faults.point("vectors")
    except OSError as exc:
        raise write_error(store.root / relpath, exc) from exc
    return relpath
