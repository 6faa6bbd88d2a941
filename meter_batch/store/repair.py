"""`repair`: rebuild what a store can rebuild, say plainly what it cannot, in one commit.

Derived files are rebuilt from the Parquet parts: a missing or damaged vectors file, the
FAISS index (always, from the repaired parts), the catalog. A manifest whose name and
content disagree is set aside (renamed ``*.set-aside``), as are unreadable ones, while a
good manifest remains. Lists that name a file twice are made unique, a rewound
``next_image_id`` is raised above the highest stored id, and files committed before
checksums get theirs. What is lost for good (a damaged Parquet part, a label matrix or
prediction part) is reported with what to do; ``drop_damaged`` takes it out of the
manifest, so that the next encode encodes those images again and the next classify
scores again, instead of every reader tripping on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from meter_batch.errors import StoreError
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import (
    Store,
    commit,
    locked,
    manifest_files,
    open_store,
    read_manifest,
    remove_debris,
    staged_path,
)
from meter_batch.store.index import add_embeddings, new_index, save_index
from meter_batch.store.integrity import file_problem, file_sum
from meter_batch.store.invariants import id_range
from meter_batch.store.layout import STORE_FILE, index_file, new_run_id, vectors_file
from meter_batch.store.read import read_columns
from meter_batch.store.records import LabelSetEntry, Manifest, Tombstone, TombstoneReason
from meter_batch.store.vectors import iter_vectors
from meter_batch.store.write import RunWriter, write_vectors_staged

SET_ASIDE_SUFFIX = ".set-aside"


@dataclass
class RepairReport:
    """What repair did (``fixed``), what it could not rebuild (``lost``: each with what
    to do), and what ``drop_damaged`` took out of the manifest (``dropped``)."""

    fixed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    indexed: int = 0


def repair(root: Path, drop_damaged: bool = False) -> RepairReport:
    if not (root / STORE_FILE).is_file():
        raise StoreError(f"{root} is not a meter-batch store (no {STORE_FILE})")
    report = RepairReport()
    with locked(root) as lock:
        report.fixed += _set_aside_manifests(root)
        store = open_store(root)
        store.lock = lock
        remove_debris(store)
        manifest = _unique_lists(store.manifest, report)
        damaged = _damaged_files(store, manifest)
        staged = _rebuild_vectors(store, manifest, damaged, report)
        manifest = _handle_lost(store, manifest, damaged, drop_damaged, report)
        manifest, tombstones = _supersede_duplicates(store, manifest, damaged, report)
        manifest = _raise_next_id(store, manifest, damaged, report)
        staged += tombstones
        manifest = _adopt_sums(store, manifest, {**damaged, **dict.fromkeys(staged, "")}, report)
        index_path, manifest = _rebuild_index(store, manifest, damaged, staged, report)
        commit(store, manifest, staged, index_path)
        try:
            refresh_catalog(store)
        except StoreError as exc:  # a damaged part still listed: DuckDB cannot read it
            report.lost.append(f"the catalog was not rebuilt: {exc}")
    return report


def _set_aside_manifests(root: Path) -> list[str]:
    """Rename manifests whose name is not their seq, or that do not read, while at least
    one good manifest remains (else nothing is touched, and the error says so)."""
    bad: list[tuple[Path, str]] = []
    for path in manifest_files(root):
        try:
            seq = read_manifest(path).seq
            if path.stem != f"{seq:012d}":
                bad.append((path, f"it holds commit {seq}"))
        except StoreError as exc:
            bad.append((path, f"unreadable: {str(exc).rsplit(': ', 1)[-1]}"))
    if bad and len(bad) == len(manifest_files(root)):
        raise StoreError(
            f"no manifest of {root} reads and agrees with its name ({bad[-1][0].name}: "
            f"{bad[-1][1]}); repair needs one: nothing was changed"
        )
    for path, _ in bad:
        os.replace(path, path.with_name(path.name + SET_ASIDE_SUFFIX))
    return [f"set aside {path.name} ({why})" for path, why in bad]


def _unique_lists(manifest: Manifest, report: RepairReport) -> Manifest:
    versions = {entry.version: entry for entry in manifest.label_sets}  # the last one wins
    label_sets = tuple(replace(e, parts=tuple(dict.fromkeys(e.parts))) for e in versions.values())
    repaired = replace(
        _map_parts(manifest, lambda p: tuple(dict.fromkeys(p))), label_sets=label_sets
    )
    if repaired != manifest:
        report.fixed.append("the manifest listed files or label sets twice: each once now")
    return repaired


def _damaged_files(store: Store, manifest: Manifest) -> dict[str, str]:
    """Each live file that is missing, of another size or digest, or unreadable: why."""
    found = {}
    for relpath in sorted(manifest.live_files()):
        problem = file_problem(store.root, relpath, manifest.files.get(relpath), quick=False)
        if problem is not None:
            found[relpath] = problem
    return found


def _rebuild_vectors(
    store: Store, manifest: Manifest, damaged: dict[str, str], report: RepairReport
) -> list[str]:
    """Stage a new vectors file for each damaged one whose Parquet part is sound."""
    staged = []
    for part in manifest.embedding_parts:
        if vectors_file(part) in damaged and part not in damaged:
            table = read_columns(store.path(part), ["image_id", "embedding"])
            staged.append(write_vectors_staged(store, table, part))
            report.fixed.append(f"rebuilt {vectors_file(part)} ({damaged.pop(vectors_file(part))})")
    return staged


def _handle_lost(
    store: Store, manifest: Manifest, damaged: dict[str, str], drop: bool, report: RepairReport
) -> Manifest:
    """Report what cannot be rebuilt; with ``drop``, take it out of the manifest."""
    for relpath, problem in damaged.items():
        if relpath != manifest.index:
            (report.dropped if drop else report.lost).append(
                f"{relpath} {problem}: {_what_then(store, relpath, drop)}"
            )
    if not drop:
        return manifest
    lost = set(damaged) - {manifest.index}
    label_sets = tuple(
        _without_lost(entry, lost)
        for entry in manifest.label_sets
        if entry.matrix not in lost and entry.examples not in lost
    )
    kept = _map_parts(manifest, lambda parts: tuple(p for p in parts if p not in lost))
    return replace(kept, label_sets=label_sets)


def _map_parts(
    manifest: Manifest, change: Callable[[tuple[str, ...]], tuple[str, ...]]
) -> Manifest:
    """The manifest with ``change`` applied to each list of an encode run's parts."""
    return replace(
        manifest,
        embedding_parts=change(manifest.embedding_parts),
        failure_parts=change(manifest.failure_parts),
        tombstone_parts=change(manifest.tombstone_parts),
        example_parts=change(manifest.example_parts),
        thumbnail_parts=change(manifest.thumbnail_parts),
    )


def _without_lost(entry: LabelSetEntry, lost: set[str]) -> LabelSetEntry:
    """A label set that lost a prediction part is scored again from the start."""
    if lost.isdisjoint(entry.parts):
        return entry
    return replace(entry, parts=(), scored_below_id=0)


def _what_then(store: Store, relpath: str, drop: bool) -> str:
    first = relpath.split("/", 1)[0]
    then = {
        "embeddings": "the next encode of its folder encodes its images again",
        "failures": "the next encode tries its files again",
        "tombstones": "rows it ended are ended again (deleted files by the next encode)",
        "labelsets": "the next classify with that label file makes it again (needs the model)",
        "predictions": "the next classify with that label file scores every image again",
        "thumbnails": "the next report makes its thumbnails again (of images whose files "
        "are still there; the others show placeholders)",
    }[first]
    if relpath.startswith(f"{first}/examples-"):  # an example part (evaluate, calibrate)
        then = "the next command that needs those example files encodes them again"
    if first == "embeddings" and relpath.endswith(".parquet"):
        then = then.replace("its images", _images_of(store, relpath))
    if drop:
        return f"dropped; {then}"
    return f"cannot be rebuilt; `meter-batch repair --drop-damaged` drops it, then {then}"


def _images_of(store: Store, part: str) -> str:
    """'its N images (ids a-b)', from the part's vectors file where that still reads."""
    try:
        ids = np.concatenate([i for i, _ in iter_vectors(store.path(vectors_file(part)))])
    except (OSError, ValueError):
        return "its images"
    return f"its {len(ids)} images (ids {ids.min()}-{ids.max()})" if len(ids) else "its images"


def _supersede_duplicates(
    store: Store, manifest: Manifest, damaged: dict[str, str], report: RepairReport
) -> tuple[Manifest, list[str]]:
    """A path with two live rows (its tombstone part was dropped) keeps its newest row."""
    dead = _tombstoned(store, manifest, damaged, [])
    newest: dict[bytes, int] = {}
    ended: list[Tombstone] = []
    for part in manifest.embedding_parts:
        if part in damaged:
            continue
        table = read_columns(store.path(part), ["image_id", "path", "path_bytes"])
        for image_id, path, raw in zip(*(c.to_pylist() for c in table.columns), strict=True):
            key = raw if raw is not None else path.encode("utf-8")
            if image_id in dead:
                continue
            older = newest.get(key)
            if older is not None:
                ended.append(Tombstone(key, min(older, image_id), TombstoneReason.SUPERSEDED))
            newest[key] = max(image_id, older if older is not None else image_id)
    if not ended:
        return manifest, []
    writer = RunWriter(store, new_run_id(), manifest.next_image_id, part_rows=1_000_000)
    writer.add_tombstones(ended)
    staged = writer.flush()
    report.fixed.append(f"ended {len(ended)} older rows of paths that had two live rows")
    return replace(manifest, tombstone_parts=manifest.tombstone_parts + staged.tombstones), list(
        staged.files
    )


def _tombstoned(
    store: Store, manifest: Manifest, damaged: dict[str, str], staged: list[str]
) -> set[int]:
    """The ended image ids, from the sound tombstone parts (a new one is still staged)."""
    dead: set[int] = set()
    for part in manifest.tombstone_parts:
        if part not in damaged:
            path = staged_path(store, part) if part in staged else store.path(part)
            column = read_columns(path, ["image_id"]).column(0)
            dead.update(i for i in column.to_pylist() if i is not None)
    return dead


def _raise_next_id(
    store: Store, manifest: Manifest, damaged: dict[str, str], report: RepairReport
) -> Manifest:
    spans = [
        id_range(store.root, manifest, part)
        for part in manifest.embedding_parts
        if part not in damaged
    ]
    top = max((span[1] for span in spans if span is not None), default=-1)
    if top < manifest.next_image_id:
        return manifest
    report.fixed.append(f"next_image_id {manifest.next_image_id} -> {top + 1} (above every id)")
    return replace(manifest, next_image_id=top + 1)


def _adopt_sums(
    store: Store, manifest: Manifest, skipped: dict[str, str], report: RepairReport
) -> Manifest:
    """Files committed before checksums, that read: their size and digest from now on.
    (``skipped``: the damaged files, and those staged, whose sums the commit records.)"""
    unsummed = sorted(manifest.live_files() - set(manifest.files) - set(skipped))
    unsummed = [p for p in unsummed if p != manifest.index]  # the index is written anew
    if not unsummed:
        return manifest
    report.fixed.append(f"recorded the checksums of {len(unsummed)} files written before them")
    sums = {relpath: file_sum(store.path(relpath)) for relpath in unsummed}
    return replace(manifest, files={**manifest.files, **sums})


def _rebuild_index(
    store: Store,
    manifest: Manifest,
    damaged: dict[str, str],
    staged: list[str],
    report: RepairReport,
) -> tuple[Path, Manifest]:
    """A new FAISS index of the repaired store's live vectors, staged for the commit."""
    dead = _tombstoned(store, manifest, damaged, staged)
    index = new_index(store.identity.embed_dim)
    for part in manifest.embedding_parts:
        vectors = vectors_file(part)
        if vectors in damaged:
            continue
        path = staged_path(store, vectors) if vectors in staged else store.path(vectors)
        for ids, matrix in iter_vectors(path):
            keep = ~np.isin(ids, np.fromiter(dead, np.int64, len(dead)))
            add_embeddings(index, ids[keep], matrix[keep])
    relpath = index_file(store.manifest.seq + 1)
    save_index(index, staged_path(store, relpath))
    report.indexed = int(index.ntotal)
    report.fixed.append(f"rebuilt the FAISS index ({index.ntotal} live rows)")
    updated = replace(manifest, seq=store.manifest.seq + 1, index=relpath, index_current=True)
    return staged_path(store, relpath), updated
