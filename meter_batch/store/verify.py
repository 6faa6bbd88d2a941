"""`verify`: do the manifest, the files' contents, the FAISS ids and the catalog agree?

Every problem found is listed (none is fatal to the check itself); an empty list means
the store is consistent: every listed file has the size and SHA-256 its commit recorded
(``quick``: the size only) and reads, ids are unique, no embedding is NaN or infinite,
every live row is in the index and the index holds nothing else, and the catalog shows
the same rows. While a run holds the store's lock, what a run in progress leaves behind
(an index that lags, a catalog a commit behind) is a note, not a problem.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from meter_batch.errors import MeterBatchError, StoreError
from meter_batch.store.catalog import catalog_is_current, catalog_moved_from
from meter_batch.store.commit import Store, lock_is_held, open_store
from meter_batch.store.index import index_ids, load_index
from meter_batch.store.integrity import file_problem
from meter_batch.store.invariants import writer_problems
from meter_batch.store.layout import CATALOG, vectors_file
from meter_batch.store.read import read_columns
from meter_batch.store.vectors import iter_vectors


@dataclass(frozen=True)
class Report:
    """What verify found: every problem (none: consistent), the rows it counted (rows,
    live, tombstoned; empty when the store could not be opened), and notes that are not
    problems (a run in progress)."""

    problems: list[str]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def verify(root: Path, quick: bool = False) -> Report:
    """Check the store at ``root``; ``quick`` compares file sizes, not digests."""
    try:
        store = open_store(root)
    except MeterBatchError as exc:
        return Report([str(exc)], {})
    problems: list[str] = []
    notes: list[str] = []
    lagging = notes if lock_is_held(root) else problems
    if lagging is notes:
        notes.append("a run holds the store's lock: it is in progress")
    damaged = _check_files(store, quick, problems)
    ids = _check_parts(store, damaged, problems)
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} image ids appear more than once: {_few(duplicates)}")
    problems += _writer_problems(store)
    dead = _check_tombstones(store, damaged, problems)
    live = set(ids) - dead
    _check_index(store, live, problems, lagging)
    _check_catalog(store, len(live), problems, lagging)
    counts = {"rows": len(ids), "live": len(live), "tombstoned": len(dead)}
    return Report(problems, counts, notes)


def _writer_problems(store: Store) -> list[str]:
    try:
        return writer_problems(store.root, store.manifest)
    except StoreError:
        return []  # a part that cannot be read: _check_files has said so


def _check_files(store: Store, quick: bool, problems: list[str]) -> set[str]:
    """Every live file against its commit's size and digest; returns the damaged ones."""
    damaged = set()
    for relpath in sorted(store.manifest.live_files()):
        problem = file_problem(store.root, relpath, store.manifest.files.get(relpath), quick)
        if problem:
            problems.append(f"{relpath}: {problem}")
            damaged.add(relpath)
    return damaged


def _check_parts(store: Store, damaged: set[str], problems: list[str]) -> list[int]:
    ids: list[int] = []
    for relpath in store.manifest.embedding_parts:
        if relpath in damaged:
            continue
        try:
            part_ids = read_columns(store.path(relpath), ["image_id"]).column(0).to_pylist()
        except StoreError as exc:
            problems.append(f"{relpath}: unreadable: {exc}")
            continue
        ids += part_ids
        if vectors_file(relpath) not in damaged:
            _check_vectors(store.path(vectors_file(relpath)), relpath, part_ids, problems)
    return ids


def _check_vectors(vectors: Path, relpath: str, part_ids: list[int], problems: list[str]) -> None:
    """The vectors file holds the part's ids, in order, and only finite numbers; read a
    record batch at a time, so memory stays flat whatever the part's size."""
    ids: list[int] = []
    finite = True
    try:
        for batch_ids, matrix in iter_vectors(vectors):
            ids += batch_ids.tolist()
            finite = finite and bool(np.isfinite(matrix).all())
    except StoreError as exc:
        problems.append(f"{relpath}: its vectors file is unreadable: {exc}")
        return
    if ids != part_ids:
        problems.append(f"{relpath}: its vectors file holds other image ids than the part")
    if not finite:
        problems.append(f"{relpath}: its vectors file holds NaN or infinite embeddings")


def _check_tombstones(store: Store, damaged: set[str], problems: list[str]) -> set[int]:
    dead: set[int] = set()
    for relpath in store.manifest.tombstone_parts:
        if relpath not in damaged:
            try:
                column = read_columns(store.path(relpath), ["image_id"]).column(0)
            except StoreError as exc:
                problems.append(f"{relpath}: unreadable: {exc}")
                continue
            dead.update(i for i in column.to_pylist() if i is not None)
    never = {i for i in dead if i >= store.manifest.next_image_id}
    if never:
        problems.append(f"{len(never)} tombstones name ids never given out: {_few(never)}")
    return dead


def _check_index(store: Store, live: set[int], problems: list[str], lagging: list[str]) -> None:
    if not store.manifest.index:
        if live:
            lagging.append(
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
        lagging.append(
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


def _check_catalog(store: Store, live: int, problems: list[str], lagging: list[str]) -> None:
    catalog = store.path(CATALOG)
    if not catalog.exists():
        problems.append(f"{CATALOG} is missing")
        return
    built_for = catalog_moved_from(store.root)
    if built_for is not None:  # its views would read another place's files, or none
        problems.append(
            f"{CATALOG} was built for the store at {built_for} (this one was moved or "
            f"copied): `meter-batch repair {store.root}` or the next query rebuilds it"
        )
        return
    try:
        with duckdb.connect(str(catalog), read_only=True) as con:
            shown = con.sql("SELECT count(*) FROM images").fetchall()[0][0]
    except duckdb.Error as exc:
        problems.append(f"{CATALOG} cannot be queried: {str(exc).splitlines()[0]}")
        return
    if catalog_is_current(store):
        if shown != live:
            problems.append(f"{CATALOG} shows {shown} images, the parts hold {live} live rows")
    else:  # a catalog a commit behind shows other counts: that it is behind says it all
        lagging.append(
            f"{CATALOG} was built from an older manifest or by an older meter-batch "
            f"(the next encode or classify rebuilds it; `meter-batch repair {store.root}` now)"
        )


def _few(values: object) -> str:
    items = sorted(values)  # type: ignore[call-overload]
    shown = ", ".join(str(v) for v in items[:5])
    return shown + (" ..." if len(items) > 5 else "")
