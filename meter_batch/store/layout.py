"""Every folder and file name of a store, in one place.

STORE/
  store.json                        format version + model identity (+ how to reload it)
  manifests/<seq>.json              the commit point: which parts and index are live
  embeddings/part-<run>-<n>.parquet image rows + embeddings (what DuckDB reads)
  embeddings/part-<run>-<n>.vectors.arrow   the same vectors for scoring (derived)
  failures/part-<run>-<n>.parquet   files that have no embedding, with a reason
  tombstones/part-<run>-<n>.parquet rows (and standing failures) that ended
  index/<seq>.faiss                 FAISS index of the live embeddings (derived)
  labelsets/<version>.parquet       a label-set version's label matrix (and probe bias)
  labelsets/<version>.examples.parquet  a few-shot version's example vectors
  labelsets/examples-<run>.parquet  example files evaluate / calibrate encoded
  predictions/<version>/part-<run>-<n>.parquet
  thumbnails/thumbs-<run>.parquet   small WebP pictures by content hash, for `report`
  staging/                          files of the commit in progress
  catalog.duckdb, catalog-empty/    the analysts' DuckDB views (derived)
  .lock
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Literal

STORE_FILE = "store.json"
LOCK_FILE = ".lock"
CATALOG = "catalog.duckdb"
CATALOG_EMPTY = "catalog-empty"  # schema-only Parquet files standing in for "no parts yet"
VECTORS_SUFFIX = ".vectors.arrow"
PARQUET_SUFFIX = ".parquet"
INDEX_SUFFIX = ".faiss"


class Folder(StrEnum):
    """The store's folders; each is created with the store."""

    MANIFESTS = "manifests"
    EMBEDDINGS = "embeddings"
    FAILURES = "failures"
    TOMBSTONES = "tombstones"
    INDEX = "index"
    LABELSETS = "labelsets"
    PREDICTIONS = "predictions"
    THUMBNAILS = "thumbnails"
    STAGING = "staging"


# Folders whose files only a manifest makes live: anything else in them is debris.
DATA_FOLDERS = (
    Folder.EMBEDDINGS,
    Folder.FAILURES,
    Folder.TOMBSTONES,
    Folder.INDEX,
    Folder.LABELSETS,
    Folder.PREDICTIONS,
    Folder.THUMBNAILS,
)
RunPart = Literal[Folder.EMBEDDINGS, Folder.FAILURES, Folder.TOMBSTONES]  # an encode run's parts
LiveKind = Literal["embeddings", "vectors", "failures", "tombstones", "predictions"]


def run_part(folder: RunPart, run_id: str, number: int) -> str:
    return f"{folder}/part-{run_id}-{number:05d}{PARQUET_SUFFIX}"


def prediction_part(version: str, run_id: str, number: int) -> str:
    return f"{Folder.PREDICTIONS}/{version}/part-{run_id}-{number:05d}{PARQUET_SUFFIX}"


def label_matrix_file(version: str) -> str:
    return f"{Folder.LABELSETS}/{version}{PARQUET_SUFFIX}"


def label_examples_file(version: str) -> str:
    return f"{Folder.LABELSETS}/{version}.examples{PARQUET_SUFFIX}"


def example_vectors_part(run_id: str) -> str:
    return f"{Folder.LABELSETS}/examples-{run_id}{PARQUET_SUFFIX}"


def thumbnail_part(run_id: str) -> str:
    return f"{Folder.THUMBNAILS}/thumbs-{run_id}{PARQUET_SUFFIX}"


def index_file(seq: int) -> str:
    return f"{Folder.INDEX}/{seq:012d}{INDEX_SUFFIX}"


def manifest_file(seq: int) -> str:
    return f"{Folder.MANIFESTS}/{seq:012d}.json"  # (matches MANIFEST_GLOB)


def vectors_file(parquet_relpath: str) -> str:
    """The scoring copy that lies beside an embeddings part."""
    path = PurePosixPath(parquet_relpath)
    return str(path.with_name(path.name.removesuffix(PARQUET_SUFFIX) + VECTORS_SUFFIX))


def staged_name(relpath: str) -> str:
    """A file's name in staging/ while its commit is in progress."""
    return relpath.replace("/", "__")


def catalog_empty_file(kind: LiveKind) -> str:
    return f"{CATALOG_EMPTY}/{kind}{PARQUET_SUFFIX}"


MANIFEST_GLOB = "*.json"  # in manifests/; the names sort in commit order
TEMP_GLOB = ".*.tmp-*"  # files written under a temporary name, renamed when complete


def temp_name(name: str) -> str:
    """The name ``name`` is written under, in the same folder, until it is complete."""
    return f".{name}.tmp-{os.getpid()}"


def new_run_id() -> str:
    """Sortable by time (the newest failure of a path wins by it) and unique."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"
