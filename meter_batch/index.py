"""FAISS index over the stored embeddings, keyed by image_id.

An exact inner-product scan over float16 codes (IndexScalarQuantizer QT_fp16 inside
IndexIDMap2): the store keeps float16 embeddings, so fp16 codes lose nothing and take
half the memory of a flat float32 index. The index is derived data: it can always be
rebuilt from the Parquet parts.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from meter_batch import faults
from meter_batch.errors import StoreError


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
    """Write to ``path`` and read it back: faiss reports some write errors only on stderr."""
    try:
        faiss.write_index(index, str(path))
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    except (RuntimeError, OSError) as exc:
        raise StoreError(f"writing FAISS index {path} failed: {exc}") from exc
    faults.point("faiss")
    check = load_index(path)
    if check.ntotal != index.ntotal or check.d != index.d:
        raise StoreError(
            f"FAISS index {path} reads back with {check.ntotal} vectors of dim {check.d}, "
            f"expected {index.ntotal} of dim {index.d}"
        )


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
