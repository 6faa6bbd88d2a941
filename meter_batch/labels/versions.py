"""Which version of each label-set name is *current*: the one `latest_predictions` shows.

The nightly job (and `classify --make-current`) applies its version, which becomes
current unless a person pinned another; a hand `classify` of an edited file, or an
`evaluate`, scores or judges a version without moving what analysts see. The first
version of a name is current from its first classify. `labelsets` lists, pins, unpins
and drops versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from meter_batch.errors import ConfigError
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import commit, locked, next_manifest, open_existing, open_store
from meter_batch.store.records import CurrentHow, CurrentVersion, LabelSetEntry, Manifest


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def after_classify(manifest: Manifest, entry: LabelSetEntry, make_current: bool) -> Manifest:
    """``manifest`` (which lists ``entry`` classified) with the name's current version:
    unchanged by a hand classify, this version when it is the name's first or applied."""
    recorded = next((c for c in manifest.current if c.name == entry.name), None)
    if recorded is None:
        others = [e for e in manifest.label_sets if e.name == entry.name and e is not entry]
        before = _without(manifest, entry).current_of(entry.name) if others else None
        how = CurrentHow.LATEST if before is not None else CurrentHow.FIRST
        recorded = before or CurrentVersion(entry.name, entry.version, how, _now(), entry.version)
    if make_current:
        recorded = _applied(recorded, entry.version)
    return _with_current(manifest, recorded)


def _without(manifest: Manifest, entry: LabelSetEntry) -> Manifest:
    return replace(manifest, label_sets=tuple(e for e in manifest.label_sets if e is not entry))


def _applied(current: CurrentVersion, version: str) -> CurrentVersion:
    if current.how == CurrentHow.PINNED:
        return replace(current, applied=version)  # the pin stands; the job's is remembered
    return CurrentVersion(current.name, version, CurrentHow.APPLIED, _now(), version)


def _with_current(manifest: Manifest, current: CurrentVersion) -> Manifest:
    others = tuple(c for c in manifest.current if c.name != current.name)
    return replace(manifest, current=tuple(sorted((*others, current), key=lambda c: c.name)))


@dataclass(frozen=True)
class VersionRow:
    """One label-set version as `labelsets` lists it."""

    entry: LabelSetEntry
    current: CurrentVersion | None  # set on the name's current version
    evaluations: int
    last_accuracy: float | None


def version_rows(manifest: Manifest) -> list[VersionRow]:
    rows = []
    for name in manifest.names():
        current = manifest.current_of(name)
        entries = sorted(
            (e for e in manifest.label_sets if e.name == name), key=lambda e: e.created_at
        )
        for entry in entries:
            evaluations = [r for r in manifest.evaluations if r.version == entry.version]
            accuracy = evaluations[-1].accuracy if evaluations else None
            mark = current if current is not None and current.version == entry.version else None
            rows.append(VersionRow(entry, mark, len(evaluations), accuracy))
    return rows


def pin(store_root: Path, version: str) -> CurrentVersion:
    """Make ``version`` its name's current version until unpinned."""
    return _change(store_root, lambda m: _pinned(m, _entry(m, version)))


def unpin(store_root: Path, name: str) -> CurrentVersion:
    """Back to the version the job applied last (the pinned one if it never applied any)."""
    return _change(store_root, lambda m: _unpinned(m, name))


def drop(store_root: Path, target: str) -> list[str]:
    """Drop a version, or every version of a name; returns the versions dropped. Their
    files are removed as debris when the next run opens the store."""
    dropped: list[str] = []

    def without(manifest: Manifest) -> Manifest:
        gone = [e for e in manifest.label_sets if target in (e.version, e.name)]
        if not gone:
            raise ConfigError(f"no label-set name or version {target!r} in {store_root}")
        dropped.extend(e.version for e in gone)
        kept = tuple(e for e in manifest.label_sets if e not in gone)
        current = tuple(c for c in manifest.current if c.version not in dropped)
        return replace(manifest, label_sets=kept, current=current)

    _commit_change(store_root, without)
    return dropped


def _entry(manifest: Manifest, version: str) -> LabelSetEntry:
    entry = manifest.label_set(version)
    if entry is None:
        known = ", ".join(e.version for e in manifest.label_sets) or "none"
        raise ConfigError(f"no label-set version {version!r}; versions: {known}")
    return entry


def _pinned(manifest: Manifest, entry: LabelSetEntry) -> Manifest:
    before = manifest.current_of(entry.name)
    applied = before.applied if before is not None else None
    pinned = CurrentVersion(entry.name, entry.version, CurrentHow.PINNED, _now(), applied)
    return _with_current(manifest, pinned)


def _unpinned(manifest: Manifest, name: str) -> Manifest:
    current = manifest.current_of(name)
    if current is None:
        raise ConfigError(f"no label-set name {name!r}; names: {', '.join(manifest.names())}")
    version = current.applied or current.version
    applied = CurrentVersion(name, version, CurrentHow.APPLIED, _now(), version)
    return _with_current(manifest, applied)


def _change(store_root: Path, change: Callable[[Manifest], Manifest]) -> CurrentVersion:
    """Commit ``change``; the current version it set (the one set last)."""
    return max(_commit_change(store_root, change).current, key=lambda c: c.since)


def _commit_change(store_root: Path, change: Callable[[Manifest], Manifest]) -> Manifest:
    open_store(store_root)  # a clear error, and nothing created, when it is not a store
    with locked(store_root) as lock:
        store = open_existing(store_root, lock)
        updated = change(store.manifest)
        manifest = next_manifest(store, label_sets=updated.label_sets, current=updated.current)
        commit(store, manifest, [], None)
        refresh_catalog(store)
        return store.manifest
