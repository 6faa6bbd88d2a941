"""Predictions and label matrices -> staged Parquet parts, committed by the classify run."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from meter_batch import faults
from meter_batch.store.commit import Store, staged_path, write_error, write_parquet_staged
from meter_batch.store.layout import label_matrix_file, prediction_part
from meter_batch.store.read import read_columns


class PredictionWriter:
    """Streams prediction batches into staged Parquet parts of at most ``part_rows`` rows.

    Parquet encoding runs on a background thread (pyarrow releases the GIL), overlapping
    the scoring of the next chunk; at most two batches wait, so memory stays flat.
    """

    def __init__(self, store: Store, version: str, run_id: str, part_rows: int = 1_000_000) -> None:
        self.store, self.version, self.run_id, self.part_rows = store, version, run_id, part_rows
        self.staged: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictions")
        self._pending: deque[Future[None]] = deque()

    def add(self, batch: pa.RecordBatch) -> None:
        while len(self._pending) >= 2:
            self._pending.popleft().result()  # re-raises a failed write here
        self._pending.append(self._pool.submit(self._write, batch))
        self.rows += batch.num_rows

    def finish(self) -> list[str]:
        try:
            while self._pending:
                self._pending.popleft().result()
            self._close()
        except OSError as exc:
            raise write_error(self.store.root, exc) from exc
        finally:
            self._pool.shutdown(wait=True)
        return self.staged

    def _write(self, batch: pa.RecordBatch) -> None:
        try:
            if self._writer is None or self._part_rows >= self.part_rows:
                self._open(batch.schema)
            assert self._writer is not None
            self._writer.write_batch(batch)
            faults.point("predictions")
        except OSError as exc:
            raise write_error(self.store.root, exc) from exc
        self._part_rows += batch.num_rows

    def _open(self, schema: pa.Schema) -> None:
        self._close()
        relpath = prediction_part(self.version, self.run_id, len(self.staged))
        # lz4: 1.8M rows/s here against zstd's 1.2M, for 15 % larger files. Statistics on
        # image_id only (what readers filter on) and dictionaries only for the text columns
        # (floats do not repeat): 3.66M rows/s against 2.12M with pyarrow's defaults, for
        # 25.5 bytes a row against 22.7 (4096-row batches, K = 10, top 3, the dev Xeon)
        self._writer = pq.ParquetWriter(
            staged_path(self.store, relpath),
            schema,
            compression="lz4",
            write_statistics=["image_id"],
            use_dictionary=[f.name for f in schema if pa.types.is_dictionary(_values(f.type))],
        )
        self.staged.append(relpath)
        self._part_rows = 0

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        with open(staged_path(self.store, self.staged[-1]), "rb+") as handle:
            os.fsync(handle.fileno())
        self._writer = None


def write_label_matrix(
    store: Store, version: str, label_ids: list[str], prompts: list[list[str]], matrix: np.ndarray
) -> str:
    """Stage the label embedding matrix of a label-set version; returns its relative path."""
    relpath = label_matrix_file(version)
    dim = matrix.shape[1]
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    table = pa.table(
        {
            "label_id": pa.array(label_ids, pa.string()),
            "prompts": pa.array(prompts, pa.list_(pa.string())),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    write_parquet_staged(store, table, relpath)
    return relpath


def read_label_matrix(path: Path) -> np.ndarray:
    column = read_columns(path, ["embedding"]).column("embedding").combine_chunks()
    return column.values.to_numpy().reshape(len(column), column.type.list_size)


def _values(kind: pa.DataType) -> pa.DataType:
    """A list column's item type; any other column's own."""
    return kind.value_type if pa.types.is_fixed_size_list(kind) else kind
