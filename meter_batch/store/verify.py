"""`verify`: do the manifest, the parts, the FAISS ids and the catalog agree?

Every problem found is listed (none is fatal to the check itself); an empty list means
the store is consistent: every listed file reads, ids are unique, every live row is in
the index and the index holds nothing else, and the catalog shows the same rows.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from meter_batch.errors import MeterBatchError
from meter_batch.store.catalog import catalog_is_current
from meter_batch.store.commit import Store, open_store
from meter_batch.store.index import index_ids, load_index
from meter_batch.store.layout import CATALOG, vectors_file
from meter_batch.store.read import read_columns, tombstoned_ids


class Report(NamedTuple):
    """What verify found: every problem (none: consistent), and the rows it counted
    (rows, live, tombstoned; empty when the store could not be opened)."""

    problems: list[str]
    counts: dict[str, int]


def verify(root: Path) -> Report:
    """Check the store at ``root``."""
    try:
        store = open_store(root)
    except MeterBatchError as exc:
        return Report([str(exc)], {})
    problems: list[str] = []
    ids = _check_parts(store, problems)
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} image ids appear more than once: {_few(duplicates)}")
    if ids and max(ids) >= store.manifest.next_image_id:
        problems.append(f"image id {max(ids)} >= the manifest's next_image_id")
    dead = _check_tombstones(store, set(ids), problems)
    live = set(ids) - dead
    _check_index(store, live, problems)
    _check_catalog(store, len(live), problems)
    _check_label_sets(store, problems)
    return Report(problems, {"rows": len(ids), "live": len(live), "tombstoned": len(dead)})


def _check_parts(store: Store, problems: list[str]) -> list[int]:
    ids: list[int] = []
    for relpath in store.manifest.embedding_parts:
        part = store.path(relpath)
        try:
            part_ids = read_columns(part, ["image_id"]).column(0).to_pylist()
        except (OSError, ValueError) as exc:
            problems.append(f"{relpath}: unreadable: {exc}")
            continue
        ids += part_ids
        _check_vectors(store.path(vectors_file(relpath)), relpath, part_ids, problems)
    for relpath in (*store.manifest.failure_parts, *store.manifest.tombstone_parts):
        try:
            pq.ParquetFile(store.path(relpath)).metadata  # noqa: B018 -- reads the footer
        except (OSError, ValueError) as exc:
            problems.append(f"{relpath}: unreadable: {exc}")
    return ids


def _check_vectors(vectors: Path, relpath: str, part_ids: list[int], problems: list[str]) -> None:
    try:
        with open(vectors, "rb") as handle:
            table = ipc.open_file(handle).read_all()
    except (OSError, ValueError) as exc:
        problems.append(f"{relpath}: its vectors file is unreadable: {exc}")
        return
    if table.column("image_id").to_pylist() != part_ids:
        problems.append(f"{relpath}: its vectors file holds other image ids than the part")


def _check_tombstones(store: Store, ids: set[int], problems: list[str]) -> set[int]:
    try:
        dead = tombstoned_ids(store)
    except (OSError, ValueError) as exc:
        problems.append(f"tombstones unreadable: {exc}")
        return set()
    unknown = dead - ids
    if unknown:
        problems.append(f"{len(unknown)} tombstones name ids no part holds: {_few(unknown)}")
    return dead


def _check_index(store: Store, live: set[int], problems: list[str]) -> None:
    if not store.manifest.index:
        if live:
            problems.append(
                "the manifest lists no FAISS index but the store has live rows (a first run "
                "stopped before its last commit): run encode again, or rebuild-index"
            )
        return
    try:
        present = index_ids(load_index(store.path(store.manifest.index)))
    except MeterBatchError as exc:
        problems.append(str(exc))
        return
    duplicates = [i for i, n in Counter(present.tolist()).items() if n > 1]
    if duplicates:
        problems.append(f"FAISS index holds {len(duplicates)} ids twice: {_few(duplicates)}")
    missing, extra = live - set(present.tolist()), set(present.tolist()) - live
    if not store.manifest.index_current:
        problems.append(
            "the FAISS index lags the parts (a run stopped before its last commit): "
            "run encode again, or rebuild-index"
        )
        return
    if missing:
        problems.append(
            f"{len(missing)} live rows are missing from the FAISS index: {_few(missing)}"
        )
    if extra:
        problems.append(f"FAISS index holds {len(extra)} ids without a live row: {_few(extra)}")


def _check_catalog(store: Store, live: int, problems: list[str]) -> None:
    catalog = store.path(CATALOG)
    if not catalog.exists():
        problems.append(f"{CATALOG} is missing")
        return
    try:
        with duckdb.connect(str(catalog), read_only=True) as con:
            shown = con.sql("SELECT count(*) FROM images").fetchall()[0][0]
    except duckdb.Error as exc:
        problems.append(f"{CATALOG} cannot be queried: {str(exc).splitlines()[0]}")
        return
    if shown != live:
        problems.append(f"{CATALOG} shows {shown} images, the parts hold {live} live rows")
    if not catalog_is_current(store):
        problems.append(
            f"{CATALOG} was built from an older manifest or by an older meter-batch "
            "(the next encode or classify rebuilds it)"
        )


def _check_label_sets(store: Store, problems: list[str]) -> None:
    for entry in store.manifest.label_sets:
        for relpath in [entry.matrix, *entry.parts]:
            if not store.path(relpath).is_file():
                problems.append(f"label set {entry.version}: {relpath} is missing")


def _few(values: object) -> str:
    items = sorted(values)  # type: ignore[call-overload]
    shown = ", ".join(str(v) for v in items[:5])
    return shown + (" ..." if len(items) > 5 else "")
