"""Reading committed parts back: which ids are live, and the rows of given ids.

Only what the manifest lists is read (``Store.live_paths``); a row is live until a
tombstone names its image_id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meter_batch.store.commit import Store
from meter_batch.store.integrity import reading
from meter_batch.store.records import RunRecord
from meter_batch.store.schema import embeddings_schema
from meter_batch.store.vectors import iter_vectors


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    """Some columns of one part. (pq.read_table would go through pyarrow.dataset, whose
    import loads pandas where it is installed: 0.36 s of every `verify`, measured.)"""
    with reading(path):
        return pq.ParquetFile(path).read(columns=columns)


def tombstoned_ids(store: Store) -> set[int]:
    ids: set[int] = set()
    for path in store.live_paths("tombstones"):
        column = read_columns(path, ["image_id"]).column("image_id")
        ids.update(i for i in column.to_pylist() if i is not None)
    return ids


def live_ids(store: Store) -> set[int]:
    dead = tombstoned_ids(store)
    ids: set[int] = set()
    for path in store.live_paths("embeddings"):
        ids.update(read_columns(path, ["image_id"]).column(0).to_pylist())
    return ids - dead


@dataclass(frozen=True)
class StoredImage:
    """What a new row of the same bytes carries over from a stored one (touched files)."""

    width: int
    height: int
    frames: int
    embedding: np.ndarray  # (D,) float16


def fetch_rows(store: Store, ids: list[int]) -> dict[int, StoredImage]:
    """The stored rows of ``ids``, by image_id."""
    if not ids:
        return {}
    found: dict[int, StoredImage] = {}
    columns = ["image_id", "width", "height", "frames", "embedding"]
    for path in store.live_paths("embeddings"):
        with reading(path):
            table = pq.read_table(path, columns=columns, filters=[("image_id", "in", ids)])
        matrix = embedding_matrix(table)
        for i, row in enumerate(table.select(columns[:4]).to_pylist()):
            found[row["image_id"]] = StoredImage(
                row["width"], row["height"], row["frames"], matrix[i]
            )
    return found


def paths_of(store: Store, ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    found: dict[int, str] = {}
    for part in store.live_paths("embeddings"):
        with reading(part):
            table = pq.read_table(
                part, columns=["image_id", "path"], filters=[("image_id", "in", ids)]
            )
        found.update(
            zip(table.column("image_id").to_pylist(), table.column("path").to_pylist(), strict=True)
        )
    return found


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The (N, D) float16 matrix of an embeddings table's `embedding` column."""
    column = table.column("embedding").combine_chunks()
    values = column.values.slice(
        column.offset * column.type.list_size, len(column) * column.type.list_size
    )
    return values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def live_ids_of_paths(store: Store, paths: list[str]) -> dict[str, int]:
    """The live image id of each stored ``path`` found (paths as the `path` column has them)."""
    return {path: ref.image_id for path, ref in live_refs_of(store, "path", paths).items()}


@dataclass(frozen=True)
class StoredRef:
    """A live stored image: its id and the hash of its bytes."""

    image_id: int
    content_hash: bytes


def live_refs_of(store: Store, column: str, values: list[Any]) -> dict[Any, StoredRef]:
    """The live image whose ``column`` (`path` or `content_hash`) is each value found."""
    if not values:
        return {}
    dead = tombstoned_ids(store)
    wanted = pa.array(sorted(set(values)), store_column_type(column))
    found: dict[Any, StoredRef] = {}
    for part in store.live_paths("embeddings"):
        table = read_columns(part, ["image_id", "content_hash", *{column} - {"content_hash"}])
        table = table.filter(pc.is_in(table.column(column), value_set=wanted))
        for row in table.to_pylist():
            if row["image_id"] not in dead:
                found[row[column]] = StoredRef(row["image_id"], row["content_hash"])
    return found


def live_ids_with(store: Store, column: str, values: list[Any]) -> set[int]:
    """Every live image whose ``column`` is one of ``values`` (copies included)."""
    if not values:
        return set()
    dead = tombstoned_ids(store)
    wanted = pa.array(sorted(set(values)), store_column_type(column))
    found: set[int] = set()
    for part in store.live_paths("embeddings"):
        table = read_columns(part, ["image_id", column])
        table = table.filter(pc.is_in(table.column(column), value_set=wanted))
        found.update(i for i in table.column("image_id").to_pylist() if i not in dead)
    return found


def store_column_type(column: str) -> pa.DataType:
    return embeddings_schema(1).field(column).type


def vectors_of(store: Store, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (N, D) float32) of the stored vectors of ``ids`` that are live, in store order."""
    wanted = np.asarray(sorted(set(ids) - tombstoned_ids(store)), dtype=np.int64)
    found_ids, found = [], []
    for path in store.live_paths("vectors"):
        for batch_ids, matrix in iter_vectors(path):
            keep = np.isin(batch_ids, wanted)
            if keep.any():
                found_ids.append(batch_ids[keep].copy())
                found.append(matrix[keep].astype(np.float32))
    if not found:
        return np.zeros(0, np.int64), np.zeros((0, store.identity.embed_dim), np.float32)
    return np.concatenate(found_ids), np.concatenate(found)


def image_file(runs: Mapping[str, RunRecord], run_id: str, path: str) -> Path | None:
    """The file a stored path came from: the run's image folder + the path below its
    prefix. None when no run recorded a folder, or when the path would climb out of it
    (a `..`, an absolute path: an edited store). Symlinked files, which encode follows,
    are not resolved here: serve also refuses those that lead out of the folder."""
    run = runs.get(run_id)
    if run is None or run.images_dir is None or not path.startswith(run.path_prefix):
        return None
    below = PurePosixPath(path[len(run.path_prefix) :])
    if below.is_absolute() or ".." in below.parts:
        return None
    return Path(run.images_dir) / below
