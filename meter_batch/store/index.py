"""FAISS index over the stored embeddings, keyed by image_id.

An exact inner-product scan over float16 codes (IndexScalarQuantizer QT_fp16 inside
IndexIDMap2): the store keeps float16 embeddings, so fp16 codes lose nothing and take
half the memory of a flat float32 index. The index is derived data: it can always be
rebuilt from the Parquet parts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from meter_batch import faults
from meter_batch.errors import StoreError
from meter_batch.store.commit import Store, write_error
from meter_batch.store.read import live_ids
from meter_batch.store.vectors import iter_vectors

log = logging.getLogger("meter_batch")


def new_index(dim: int) -> faiss.IndexIDMap2:
    quantizer = faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    return faiss.IndexIDMap2(quantizer)


def add_embeddings(index: faiss.IndexIDMap2, ids: np.ndarray, embeddings: np.ndarray) -> None:
    if len(ids) == 0:
        return
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))


def index_ids(index: faiss.IndexIDMap2) -> np.ndarray:
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def save_index(index: faiss.IndexIDMap2, path: Path) -> None:
    """Write to ``path`` and read it back: faiss reports some write errors only on stderr.
    The bytes go through Python's file, so a full disk is an OSError with its errno (and
    the one line every write failure gets), not a C++ message."""
    try:
        with open(path, "wb") as handle:
            _write_through(index, handle)
            handle.flush()
            os.fsync(handle.fileno())
        faults.point("faiss")
    except OSError as exc:
        raise write_error(path, exc) from exc
    check = load_index(path)
    if check.ntotal != index.ntotal or check.d != index.d:
        raise StoreError(
            f"FAISS index {path} reads back with {check.ntotal} vectors of dim {check.d}, "
            f"expected {index.ntotal} of dim {index.d}"
        )


def _write_through(index: faiss.IndexIDMap2, handle: BinaryIO) -> None:
    failed: list[OSError] = []

    def write(data: bytes) -> int:
        try:
            return handle.write(data)
        except OSError as exc:
            failed.append(exc)
            raise

    try:
        faiss.write_index(index, faiss.PyCallbackIOWriter(write))  # type: ignore[attr-defined]
    except RuntimeError as exc:
        if failed:
            raise failed[0] from exc
        raise StoreError(f"writing FAISS index failed: {exc}") from exc


def load_index(path: Path) -> faiss.IndexIDMap2:
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise StoreError(f"cannot read FAISS index {path}: {exc}") from exc
    if not isinstance(index, faiss.IndexIDMap2):
        raise StoreError(f"{path} is a {type(index).__name__}, not an id-mapped index")
    return index


def search(index: faiss.IndexIDMap2, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, image_ids), each (Q, k); missing neighbours have id -1."""
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def remove_ids(index: faiss.IndexIDMap2, ids: list[int] | np.ndarray) -> int:
    if len(ids) == 0:
        return 0
    return int(index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))  # type: ignore[arg-type]


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


def open_index(store: Store) -> faiss.IndexIDMap2:
    if store.manifest.index:
        return load_index(store.checked(store.manifest.index))
    return new_index(store.identity.embed_dim)


SHARD_CHUNK = 65_536  # rows decoded at a time while splitting: a bounded float32 copy


class ShardedIndex:
    """The index split into ``count`` parts searched in parallel threads (faiss's
    IndexShards): one query's scan uses every core (a flat index scans on one thread per
    query). Same codes, so the same scores; ids are the stored image ids."""

    def __init__(self, index: faiss.IndexIDMap2, count: int) -> None:
        ids = index_ids(index)
        self.parts = [new_index(index.d) for _ in range(count)]
        bounds = np.linspace(0, len(ids), count + 1).astype(int)
        for part, start, stop in zip(self.parts, bounds[:-1], bounds[1:], strict=True):
            for low in range(start, stop, SHARD_CHUNK):
                high = min(stop, low + SHARD_CHUNK)
                # the fp16 codes decode exactly to float32 and encode back to the same codes
                rows = index.index.reconstruct_n(int(low), int(high - low))
                add_embeddings(part, ids[low:high], rows)
        # threaded; the parts' own ids, not renumbered (the stubs know one argument only)
        self.shards = faiss.IndexShards(index.d, True, False)  # type: ignore[call-arg]
        for part in self.parts:
            self.shards.add_shard(part)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.shards.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def reconstruct(self, image_id: int) -> np.ndarray:
        for part in self.parts:
            try:
                return np.asarray(part.reconstruct(image_id))
            except RuntimeError:  # not in this part
                continue
        raise RuntimeError(f"id {image_id} not found")


class _Whole:
    """The index as loaded, behind the same two calls as ShardedIndex."""

    def __init__(self, index: faiss.IndexIDMap2) -> None:
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search(self.index, queries, k)

    def reconstruct(self, image_id: int) -> np.ndarray:
        return np.asarray(self.index.reconstruct(image_id))


Searchable = ShardedIndex | _Whole


def searchable(index: faiss.IndexIDMap2, shards: int = 1) -> Searchable:
    """``index`` ready for queries: split in ``shards`` parts when that is > 1."""
    return ShardedIndex(index, shards) if shards > 1 else _Whole(index)
