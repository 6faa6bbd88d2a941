"""Reading a store back the way an outside reader would: only what the manifest lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from meter_batch.store.commit import open_store


def read_parts(store_root: Path, kind: str) -> pa.Table:
    store = open_store(store_root)
    tables = [pq.read_table(path) for path in store.live_paths(kind)]
    return pa.concat_tables(tables) if tables else pa.table({})


def embeddings_of(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
