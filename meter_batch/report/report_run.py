"""`meter-batch report`: the stages of a report, in the order the data flow.

choose the label-set versions -> aggregates from the catalog (queries.py) -> against
truth -> the embedding map (projection.py) -> thumbnails of every image shown
(thumbnails.py; new ones committed to the store's cache) -> the page (render.py).
Nothing here opens an image but to make a thumbnail the store does not have yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from meter_batch.config import ReportSettings
from meter_batch.errors import ConfigError, StoreLockedError
from meter_batch.labels.truth import Truth, read_truth
from meter_batch.report import queries
from meter_batch.report.against_truth import AgainstTruth, against_truth
from meter_batch.report.page import Change, MapView, Page, SetView
from meter_batch.report.projection import project
from meter_batch.report.render import write_report
from meter_batch.report.thumbnails import Wanted, thumbnails
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import (
    Store,
    commit,
    locked,
    next_manifest,
    open_existing,
    open_store,
)
from meter_batch.store.layout import new_run_id
from meter_batch.store.read import image_file
from meter_batch.store.records import LabelSetEntry, Manifest
from meter_batch.store.thumbnails import Thumbnail, stage_thumbnails

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportResult:
    index: Path
    sets: tuple[str, ...]  # the versions shown
    thumbnails_made: int
    thumbnails_missing: int
    cached: bool  # the new thumbnails were committed to the store


def report(
    store_root: Path,
    names: tuple[str, ...],
    truth_file: Path | None,
    out: Path,
    settings: ReportSettings,
    interactive: bool | None = False,
) -> ReportResult:
    store = open_store(store_root)
    entries = chosen_versions(store.manifest, names)
    truth = read_truth(truth_file) if truth_file is not None else None
    # named sets must fit the truth file (as for evaluate); of every set, those that do
    strict = bool(names)
    views = [
        _set_view(store, entry, _compared(store.manifest, entries, n), truth, settings, strict)
        for n, entry in enumerate(entries)
    ]
    mapped = _map_view(store, entries, settings)
    page = Page(store_root, queries.overview(store_root), views, mapped)
    pictures = thumbnails(store, _wanted(store, page), interactive)
    cached = _cache(store_root, pictures.made)
    index = write_report(out, page, pictures.found)
    return ReportResult(index, tuple(e.version for e in entries), len(pictures.made),
                        pictures.missing, cached)  # fmt: skip


def chosen_versions(manifest: Manifest, names: tuple[str, ...]) -> list[LabelSetEntry]:
    """Each name's current version (a version id names itself); none: every name's."""
    classified = [e for e in manifest.label_sets if e.classified_at is not None]
    wanted = names or tuple(dict.fromkeys(e.name for e in classified))
    chosen = []
    for name in wanted:
        entry = manifest.label_set(name) or _current(manifest, name)
        if entry is None:
            known = ", ".join(sorted({e.name for e in classified})) or "none"
            raise ConfigError(
                f"no classified label set or version {name!r} in the store; sets: {known}"
            )
        chosen.append(entry)
    return chosen


def _current(manifest: Manifest, name: str) -> LabelSetEntry | None:
    current = manifest.current_of(name)
    return None if current is None else manifest.label_set(current.version)


def _previous(manifest: Manifest, entry: LabelSetEntry) -> LabelSetEntry | None:
    """The version of the same name classified last before ``entry``, for *what changed*."""
    older = [
        e
        for e in manifest.label_sets
        if e.name == entry.name and e.version != entry.version and e.classified_at
        and e.classified_at <= (entry.classified_at or "")
    ]  # fmt: skip
    return max(older, key=lambda e: e.classified_at or "", default=None)


def _compared(manifest: Manifest, entries: list[LabelSetEntry], n: int) -> list[LabelSetEntry]:
    """What entry ``n`` is compared with: the version of its name classified before it,
    and the set named just before it on the command line when that one is another set
    with the same label ids (an old and a new label set for the same meters)."""
    entry = entries[n]
    found = [e for e in [_previous(manifest, entry)] if e is not None]
    before = entries[n - 1] if n else None
    if before is not None and before.name != entry.name and set(before.labels) == set(entry.labels):
        found.append(before)
    return found


def _set_view(
    store: Store,
    entry: LabelSetEntry,
    compared: list[LabelSetEntry],
    truth_file: Truth | None,
    settings: ReportSettings,
    strict: bool,
) -> SetView:
    summary = queries.set_summary(
        store.root, entry.name, entry.version, entry.labels, settings.gallery
    )
    review = queries.review_queue(store.root, entry.version, settings.review)
    changes = [
        Change(
            before.name,
            before.version,
            queries.transitions(store.root, before.version, entry.version),
            queries.changed_images(store.root, before.version, entry.version, settings.gallery),
        )
        for before in compared
    ]
    return SetView(entry, summary, review, changes, _truth_view(store, entry, truth_file, strict))


def _truth_view(
    store: Store, entry: LabelSetEntry, truth: Truth | None, strict: bool
) -> AgainstTruth | None:
    if truth is None:
        return None
    if not strict and not set(truth.labels) <= set(entry.labels):
        log.info(
            "label set %s has other label ids than the truth file: no truth section", entry.name
        )
        return None
    return against_truth(store, entry.name, entry.version, entry.labels, truth)


def _map_view(store: Store, entries: list[LabelSetEntry], settings: ReportSettings) -> MapView:
    points = project(store, settings.map_points, settings.projection)
    shown = []
    if entries:
        shown = queries.predictions_of(store.root, entries[0].version, points.image_ids.tolist())
    return MapView(points, shown, entries[0].version if entries else None, settings.map_thumbnails)


def _wanted(store: Store, page: Page) -> list[Wanted]:
    runs = {run.run_id: run for run in store.manifest.runs}
    return [
        Wanted(item.content_hash, image_file(runs, item.run_id, item.path)) for item in page.shown()
    ]


def _cache(store_root: Path, made: list[Thumbnail]) -> bool:
    """Commit the thumbnails made now to the store; a store busy with a run is left as
    it is (the report is written all the same, and the next one makes them again)."""
    if not made:
        return False
    try:
        with locked(store_root) as lock:
            store = open_existing(store_root, lock)
            relpath = stage_thumbnails(store, new_run_id(), made)
            parts = (*store.manifest.thumbnail_parts, relpath)
            commit(store, next_manifest(store, thumbnail_parts=parts), [relpath], None)
            refresh_catalog(store)
    except StoreLockedError:
        log.warning("the store is busy (another run holds its lock): thumbnails not cached")
        return False
    return True
