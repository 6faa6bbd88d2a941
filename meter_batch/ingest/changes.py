"""What a run must do: compare the walk with what the store already holds.

A file is unchanged when its path, size and mtime match a live row (or a recorded
failure): it is skipped. A file whose size or mtime differ is hashed; the same content
under a new mtime is *touched* (its embedding is carried over, no decoding), other
content is *changed* (encoded again under a new image_id; the old row is superseded).
Known files the walk did not see are *deleted* — except below a folder the walk could
not read, and never all of them at once (an unmounted share looks empty).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from meter_batch.errors import InputError
from meter_batch.ingest.scan import WorkList
from meter_batch.store.commit import Store
from meter_batch.store.read import read_columns, tombstoned_ids
from meter_batch.store.records import FailureKind
from meter_batch.store.schema import CONTENT_HASH_BYTES


@dataclass(frozen=True)
class Known:
    image_id: int | None  # None: the file is known as a failure
    size: int
    mtime_ns: int
    content_hash: bytes | None


@dataclass(frozen=True)
class Touched:
    """A file whose bytes are those of a stored row, under a new mtime."""

    old_id: int
    content_hash: bytes


@dataclass(frozen=True)
class Gone:
    """A live row whose file the walk did not find."""

    relpath: bytes  # below the prefix
    image_id: int


@dataclass
class Plan:
    """What a run must do; positions are indexes into the walk's WorkList."""

    encode: list[int] = field(default_factory=list)  # to decode + encode
    supersedes: dict[int, int] = field(default_factory=dict)  # position -> old image_id
    touched: dict[int, Touched] = field(default_factory=dict)
    deleted: list[Gone] = field(default_factory=list)
    cleared: list[bytes] = field(default_factory=list)  # standing failures that are over
    standing: dict[bytes, Standing] = field(default_factory=dict)
    new_scan_failures: int = 0  # unreadable folders not recorded yet
    skipped: int = 0

    @property
    def empty(self) -> bool:
        return not (
            self.encode or self.touched or self.deleted or self.cleared or self.new_scan_failures
        )


@dataclass(frozen=True)
class Standing:
    """A failure that still stands: its file's stat (None for an unreadable folder)."""

    size: int | None
    mtime_ns: int | None
    run_id: str
    kind: FailureKind | None  # None: a kind this version does not know

    @property
    def retried(self) -> bool:
        """Whether the unchanged file is tried again (FailureKind.retried)."""
        return self.kind is None or self.kind.retried


def standing_failures(store: Store, prefix: bytes) -> dict[bytes, Standing]:
    """The latest failure of each path under ``prefix`` that no later tombstone cleared."""
    latest: dict[bytes, Standing] = {}
    for path in store.live_paths("failures"):
        names = ["path", "path_bytes", "size", "mtime_ns", "run_id", "kind", "message"]
        table = read_columns(path, names)
        values = _columns(table, *names[2:])
        for raw, size, mtime, run_id, kind, message in zip(_raw_paths(table), *values, strict=True):
            old = latest.get(raw)
            if old is None or str(run_id) >= old.run_id:
                failure = FailureKind.of_stored(str(kind), str(message))
                latest[raw] = Standing(size, mtime, str(run_id), failure)
    cleared = _cleared_failure_paths(store)
    return {
        raw[len(prefix) :]: standing
        for raw, standing in latest.items()
        if raw.startswith(prefix) and cleared.get(raw, "") < standing.run_id
    }


def _live_table(store: Store, prefix: bytes) -> pa.Table:
    """Live rows under ``prefix`` as Arrow columns: path (bytes below the prefix), image_id,
    size, mtime_ns, content_hash. Built and compared without a Python loop per file."""
    dead = pa.array(sorted(tombstoned_ids(store)), pa.int64())
    tables = []
    columns = ["image_id", "path", "path_bytes", "size", "mtime_ns", "content_hash"]
    for path in store.live_paths("embeddings"):
        table = read_columns(path, columns)
        raw = pc.coalesce(table.column("path_bytes"), pc.cast(table.column("path"), pa.binary()))
        table = table.drop_columns(["path", "path_bytes"]).append_column("path", raw)
        if len(dead):
            table = table.filter(pc.invert(pc.is_in(table.column("image_id"), value_set=dead)))
        if prefix:
            head = pc.binary_slice(table.column("path"), 0, len(prefix))  # bytes: any name
            table = table.filter(pc.equal(head, pa.scalar(prefix, pa.binary())))
            stripped = pc.binary_slice(table.column("path"), len(prefix), 1 << 30)
            table = table.set_column(table.schema.get_field_index("path"), "path", stripped)
        tables.append(table)
    if not tables:
        return pa.table({name: pa.array([], kind) for name, kind in _LIVE_TYPES})
    return pa.concat_tables(tables)


_LIVE_TYPES = [
    ("image_id", pa.int64()),
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("content_hash", pa.binary(CONTENT_HASH_BYTES)),
    ("path", pa.binary()),
]


def _columns(table: pa.Table, *names: str) -> list[list[object]]:
    return [table.column(name).to_pylist() for name in names]


def _raw_paths(table: pa.Table) -> list[bytes]:
    """File-name bytes of each row: `path_bytes` where set, else `path` as UTF-8."""
    texts = table.column("path").to_pylist()
    raws = table.column("path_bytes").to_pylist()
    return [
        raw if raw is not None else text.encode("utf-8")
        for text, raw in zip(texts, raws, strict=True)
    ]


def _cleared_failure_paths(store: Store) -> dict[bytes, str]:
    """Path -> run_id of the latest tombstone that ended a failure of that path."""
    cleared: dict[bytes, str] = {}
    for path in store.live_paths("tombstones"):
        table = read_columns(path, ["image_id", "path", "path_bytes", "run_id"])
        values = _columns(table, "image_id", "run_id")
        for raw, image_id, run_id in zip(_raw_paths(table), *values, strict=True):
            if image_id is None and str(run_id) > cleared.get(raw, ""):
                cleared[raw] = str(run_id)
    return cleared


def plan_changes(root: Path, work: WorkList, store: Store, prefix: bytes) -> Plan:
    """Join the walk with the live rows in Arrow; only files that are new, changed or gone
    reach Python, so a no-change run over millions of files stays close to the walk."""
    plan = Plan()
    live = _live_table(store, prefix)
    walked = pa.table(
        {
            "path": work.paths,
            "position": pa.array(np.arange(len(work), dtype=np.int64)),
            "walk_size": pa.array(work.sizes),
            "walk_mtime": pa.array(work.mtimes_ns),
        }
    )
    joined = walked.join(live, keys="path", join_type="left outer")
    same = pc.and_(
        pc.equal(joined.column("walk_size"), joined.column("size")),
        pc.equal(joined.column("walk_mtime"), joined.column("mtime_ns")),
    )
    plan.skipped = int(pc.sum(pc.fill_null(same, False)).as_py() or 0)
    rest = joined.filter(pc.invert(pc.fill_null(same, False)))
    failures = standing_failures(store, prefix)
    restat: list[int] = []
    known: dict[bytes, Known] = {}
    values = _columns(rest, "path", "position", "image_id", "size", "mtime_ns", "content_hash")
    for relpath, position, image_id, size, mtime, digest in zip(*values, strict=True):
        failed = failures.get(relpath)
        if image_id is not None:
            known[relpath] = Known(image_id, size, mtime, digest)
            restat.append(position)
        elif (
            failed is not None
            and not failed.retried
            and (failed.size, failed.mtime_ns) == (work.sizes[position], work.mtimes_ns[position])
        ):
            plan.skipped += 1  # a broken file that has not changed is not retried
        else:
            plan.encode.append(position)
    _sort_restat(root, work, known, restat, plan)
    plan.deleted = _deleted(work, live, failures)
    plan.cleared = _cleared(work, failures)
    plan.new_scan_failures = sum(
        1
        for f in work.failures
        if f.relpath not in failures or failures[f.relpath].size is not None
    )
    plan.standing = failures
    plan.encode.sort()
    return plan


def _sort_restat(
    root: Path, work: WorkList, known: dict[bytes, Known], positions: list[int], plan: Plan
) -> None:
    """Changed size/mtime: same content is a touch, other content a change."""
    folder = os.fsencode(root)
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashes = pool.map(lambda p: _hash_file(os.path.join(folder, work.relpath(p))), positions)
        for position, digest in zip(positions, hashes, strict=True):
            old = known[work.relpath(position)]
            assert old.image_id is not None
            if digest is not None and digest == old.content_hash:
                plan.touched[position] = Touched(old.image_id, digest)
            else:
                plan.encode.append(position)
                plan.supersedes[position] = old.image_id


def _hash_file(path: bytes) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(
                handle, lambda: hashlib.blake2b(digest_size=CONTENT_HASH_BYTES)
            ).digest()
    except OSError:
        return None  # it will fail again when decoded, and be recorded there


def _deleted(work: WorkList, live: pa.Table, failures: dict[bytes, Standing]) -> list[Gone]:
    """Live images the walk did not find (standing failures are `_cleared`'s)."""
    if any(f.relpath == b"." for f in work.failures):
        return []  # the root itself could not be listed: nothing can be called deleted
    unreadable = tuple(f.relpath.rstrip(b"/") + b"/" for f in work.failures)
    gone_rows = live.filter(pc.invert(pc.is_in(live.column("path"), value_set=work.paths)))
    gone = [
        Gone(relpath, image_id)
        for relpath, image_id in zip(*_columns(gone_rows, "path", "image_id"), strict=True)
        if not (unreadable and relpath.startswith(unreadable))
    ]
    if live.num_rows and not len(work) and len(gone) >= live.num_rows:
        raise InputError(
            f"the images directory holds no images, but the store has {live.num_rows}: "
            f"refusing to mark them all deleted (is the share mounted? If every image really "
            f"is gone, remove the store folder or start a new one)"
        )
    return sorted(gone, key=lambda item: item.relpath)


def _cleared(work: WorkList, failures: dict[bytes, Standing]) -> list[bytes]:
    """Standing failures that are over: the file is gone, or the folder reads again."""
    if not failures or any(f.relpath == b"." for f in work.failures):
        return []
    walked = set(work.paths.to_pylist())
    failing_now = {f.relpath for f in work.failures}
    unreadable = tuple(p.rstrip(b"/") + b"/" for p in failing_now)
    over = []
    for relpath in failures:
        if relpath in failing_now or relpath in walked:
            continue  # still failing, or being decoded again now: its new outcome decides
        if unreadable and relpath.startswith(unreadable):
            continue
        over.append(relpath)  # a folder that reads again, or a failed file that is gone
    return sorted(over)
