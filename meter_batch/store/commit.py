"""The commit protocol: open or create a store, its lock, staged writes, the manifest.

Readers trust only what the newest manifest lists. Parts are written to staging/,
fsynced, renamed into place, and only then is the manifest written (temp + rename):
a crash leaves debris that the next writer removes, never a half-visible commit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from meter_batch import faults
from meter_batch.config import ModelSpec
from meter_batch.errors import ConfigError, ModelMismatchError, StoreError, StoreLockedError
from meter_batch.model.identity import ModelIdentity
from meter_batch.store.integrity import checked, file_sum
from meter_batch.store.invariants import check_writable
from meter_batch.store.json_shape import check_manifest, check_store_file
from meter_batch.store.layout import (
    DATA_FOLDERS,
    LOCK_FILE,
    MANIFEST_GLOB,
    STORE_FILE,
    TEMP_GLOB,
    Folder,
    LiveKind,
    manifest_file,
    staged_name,
    temp_name,
    vectors_file,
)
from meter_batch.store.records import FORMAT_VERSION, Manifest

KEEP_MANIFESTS = 2  # the previous one stays readable for readers that opened it


@dataclass
class Store:
    """A store opened for reading (``lock`` is None) or writing."""

    root: Path
    identity: ModelIdentity
    model_source: ModelSpec  # where the model was loaded from (absolute paths)
    manifest: Manifest
    lock: BinaryIO | None = field(default=None, repr=False)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def checked(self, relative: str) -> Path:
        """A committed file's path, once its size matches its commit's record."""
        return checked(self.root, relative, self.manifest.files.get(relative))

    def live_paths(self, kind: LiveKind) -> list[Path]:
        """The committed files of one kind, in commit order, each size-checked."""
        manifest = self.manifest
        relpaths = {
            "embeddings": manifest.embedding_parts,
            "vectors": tuple(vectors_file(p) for p in manifest.embedding_parts),
            "failures": manifest.failure_parts,
            "tombstones": manifest.tombstone_parts,
            "predictions": tuple(p for entry in manifest.label_sets for p in entry.parts),
        }
        return [self.checked(p) for p in relpaths[kind]]


def open_store(root: Path) -> Store:
    """Open an existing store for reading."""
    info = _read_store_file(root)
    identity = ModelIdentity.from_json(info["model"])
    return Store(root, identity, _model_source(root, info["model_source"]), _latest(root))


def _model_source(root: Path, data: Any) -> ModelSpec:
    try:
        return ModelSpec(**data)
    except ConfigError as exc:
        raise StoreError(f"{root / STORE_FILE}: unreadable model_source ({exc})") from exc


@contextlib.contextmanager
def locked(root: Path) -> Iterator[BinaryIO]:
    """Hold the store's exclusive lock; raise StoreLockedError at once if it is taken.
    A folder this call created stays only if the run made it a store (``store.json``):
    a first run that fails early (a missing checkpoint, say) leaves nothing behind."""
    handle, created = _take_lock(root)
    try:
        yield handle
    finally:
        if created:
            _remove_if_never_a_store(root)  # still locked: no one else can be setting it up
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _take_lock(root: Path) -> tuple[BinaryIO, bool]:
    for _ in range(3):
        opened = _open_lock_file(root)
        if opened is None:
            continue  # the folder was removed between our mkdir and open: make it again
        handle, created = opened
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise StoreLockedError(f"store {root} is locked by another meter-batch run") from exc
        if _is_current_lock_file(root, handle):
            return handle, created
        handle.close()  # a failed first run removed it meanwhile: lock the folder's new one
    raise StoreLockedError(f"store {root} is being set up and removed by other runs")


def _open_lock_file(root: Path) -> tuple[BinaryIO, bool] | None:
    try:
        try:
            root.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        return open(root / LOCK_FILE, "ab"), created
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot create store at {root}: {exc.strerror or exc}") from exc


def lock_is_held(root: Path) -> bool:
    """Is a run holding the store's lock right now? (Asked without creating anything.)"""
    try:
        with open(root / LOCK_FILE, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except OSError:  # no lock file: no run has ever held it
        return False


def _is_current_lock_file(root: Path, handle: BinaryIO) -> bool:
    """A lock taken on a lock file that was unlinked meanwhile locks nothing."""
    try:
        return os.stat(root / LOCK_FILE).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _remove_if_never_a_store(root: Path) -> None:
    try:
        if not (root / STORE_FILE).exists() and os.listdir(root) == [LOCK_FILE]:
            (root / LOCK_FILE).unlink()
            root.rmdir()
    except OSError:
        pass  # the folder stays: harmless, the next run uses it


def open_existing(root: Path, lock: BinaryIO) -> Store:
    """Open a store that must already exist, for a writer holding ``lock``."""
    store = open_store(root)
    store.lock = lock
    check_writable(root, store.manifest)
    remove_debris(store)
    return store


def open_for_write(
    root: Path, identity: ModelIdentity, model_source: ModelSpec, lock: BinaryIO
) -> Store:
    """Open (creating if new) a store we hold the lock of; refuse another model's store."""
    if (root / STORE_FILE).exists():
        store = open_store(root)
        problems = store.identity.differences(identity)
        if problems:
            raise ModelMismatchError(
                f"store {root} was written by another model ({'; '.join(problems)}); "
                f"use a new --store or the store's model"
            )
        check_writable(root, store.manifest)
    else:
        store = _create(root, identity, model_source)
    store.lock = lock
    remove_debris(store)
    return store


def _create(root: Path, identity: ModelIdentity, model_source: ModelSpec) -> Store:
    try:
        for folder in Folder:
            (root / folder).mkdir(parents=True, exist_ok=True)
        _write_store_file(root, identity, model_source)
    except OSError as exc:
        raise StoreError(f"cannot create store at {root}: {exc.strerror or exc}") from exc
    return Store(root, identity, model_source, Manifest())


def update_model_source(store: Store, model_source: ModelSpec) -> None:
    """Record where the store's (identical) model is loaded from now."""
    try:
        _write_store_file(store.root, store.identity, model_source)
    except OSError as exc:
        raise write_error(store.root / STORE_FILE, exc) from exc
    store.model_source = model_source


def _write_store_file(root: Path, identity: ModelIdentity, model_source: ModelSpec) -> None:
    info = {
        "format_version": FORMAT_VERSION,
        "model": identity.to_json(),
        "model_source": asdict(model_source),
    }
    write_atomic(root / STORE_FILE, lambda f: f.write(_json_bytes(info)), "store_file")


def _read_store_file(root: Path) -> dict[str, Any]:
    try:
        info = json.loads((root / STORE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StoreError(f"{root} is not a meter-batch store (no {STORE_FILE})") from exc
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {root / STORE_FILE}: {exc}") from exc
    if not isinstance(info, dict) or not {"model", "model_source"} <= set(info):
        raise StoreError(f"{root / STORE_FILE} is not a meter-batch store file")
    if info.get("format_version") == FORMAT_VERSION:
        try:
            check_store_file(info, STORE_FILE)
        except ValueError as exc:
            raise StoreError(f"{root}: damaged {exc}") from exc
    else:
        raise StoreError(
            f"{root} has store format {info.get('format_version')!r}; "
            f"this meter-batch reads format {FORMAT_VERSION}"
        )
    return info


def manifest_files(root: Path) -> list[Path]:
    """The manifests in commit order (their names are their seq); other files are ignored."""
    files = (root / Folder.MANIFESTS).glob(MANIFEST_GLOB)
    return sorted(f for f in files if f.name.removesuffix(".json").isdigit())


def read_manifest(path: Path) -> Manifest:
    """One manifest file, its shape checked: any damage is one StoreError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        check_manifest(data, path.name)
        return Manifest.from_json(data)
    except (OSError, ValueError, RecursionError) as exc:
        raise StoreError(f"cannot read manifest {path}: {exc}") from exc


def _latest(root: Path) -> Manifest:
    """The newest manifest. Its name must be its seq: a stale copy under a higher name
    would otherwise hide every later commit, and the next writer would delete their
    parts as debris."""
    files = manifest_files(root)
    if not files:
        return Manifest()
    manifest = read_manifest(files[-1])
    if files[-1].name != PurePosixPath(manifest_file(manifest.seq)).name:
        raise StoreError(
            f"manifests disagree: {files[-1]} holds commit {manifest.seq}, not "
            f"{int(files[-1].stem)} (copied or edited by hand?); `meter-batch repair "
            f"{root}` sets aside the manifests whose name and content disagree"
        )
    return manifest


def remove_debris(store: Store) -> None:
    """Delete what a crashed run left: staged files and parts no manifest lists. Only
    inside the store: a folder that is a symbolic link is refused, links inside the
    folders are removed as links, never followed."""
    _check_real_folders(store.root)
    live = store.manifest.live_files()
    staging = store.root / Folder.STAGING
    try:
        if not staging.is_dir() or any(staging.iterdir()):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(exist_ok=True)
        manifests = store.root / Folder.MANIFESTS
        for temp in [*store.root.glob(TEMP_GLOB), *manifests.glob(TEMP_GLOB)]:
            temp.unlink(missing_ok=True)
        for folder in DATA_FOLDERS:
            for relpath in _files_below(store.root, folder):
                if relpath not in live and not _kept_index(store, folder, relpath):
                    (store.root / relpath).unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(store.root, exc) from exc


def _check_real_folders(root: Path) -> None:
    for folder in Folder:
        if (root / folder).is_symlink() or (root / folder).exists() != (root / folder).is_dir():
            raise StoreError(
                f"{root / folder} is not a folder of the store (a symbolic link or a file): "
                f"meter-batch deletes debris in its folders and will not follow it out of "
                f"the store; make it a real folder"
            )


def _files_below(root: Path, folder: Folder) -> list[str]:
    """Relative paths of the files (and links) under ``root / folder``, links not followed."""
    found = []
    for parent, folders, files in os.walk(root / folder, followlinks=False):
        links = [f for f in folders if os.path.islink(os.path.join(parent, f))]
        for name in sorted([*files, *links]):
            found.append(Path(parent, name).relative_to(root).as_posix())
    return found


def _kept_index(store: Store, folder: Folder, relpath: str) -> bool:
    """Keep the indexes the kept manifests name: a reader may still have the previous open."""
    if folder != Folder.INDEX:
        return False
    for kept in manifest_files(store.root):
        try:
            data = json.loads(kept.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("index") == relpath:
                return True
        except (OSError, ValueError):
            continue
    return False


def write_parquet_staged(store: Store, table: pa.Table, final_relpath: str) -> None:
    """Write a Parquet part into staging/ (fsynced); `commit` moves it into place."""
    staged = staged_path(store, final_relpath)
    column_compression = {name: "zstd" for name in table.column_names}
    column_compression["embedding"] = "none"  # float16 noise does not compress; keep reads fast
    try:
        with open(staged, "wb") as handle:
            pq.write_table(
                table,
                handle,
                compression=column_compression,
                use_dictionary=[c for c in ("run_id", "kind") if c in table.column_names],
                write_statistics=[c for c in table.column_names if c != "embedding"],
            )
            handle.flush()
            os.fsync(handle.fileno())
        faults.point("parquet")
    except OSError as exc:
        raise write_error(staged, exc) from exc


def staged_path(store: Store, final_relpath: str) -> Path:
    return store.root / Folder.STAGING / staged_name(final_relpath)


def commit(
    store: Store, manifest: Manifest, staged: Sequence[str], index_file: Path | None
) -> None:
    """Move staged parts (and the new index) into place, then write the manifest: the commit.
    The manifest records each live file's size and digest (the new ones computed here)."""
    try:
        manifest = _with_sums(store, manifest, staged, index_file)
        folders = set()
        for relpath in staged:
            folder = (store.root / relpath).parent
            if not folder.exists():
                folder.mkdir(parents=True)
                folders.add(folder.parent)  # the new folder's own entry must be durable too
            os.replace(staged_path(store, relpath), store.root / relpath)
            folders.add((store.root / relpath).parent)
            faults.point("rename")
        if index_file is not None and manifest.index:
            os.replace(index_file, store.root / manifest.index)
            folders.add((store.root / manifest.index).parent)
        for folder in sorted(folders):
            fsync_dir(folder)
        name = store.root / manifest_file(manifest.seq)
        write_atomic(name, lambda f: f.write(_json_bytes(manifest.to_json())), "manifest")
        faults.point("committed")
    except OSError as exc:
        raise write_error(store.root, exc) from exc
    store.manifest = manifest
    _prune_manifests(store.root)


def _with_sums(
    store: Store, manifest: Manifest, staged: Sequence[str], index_file: Path | None
) -> Manifest:
    live = manifest.live_files()
    sums = {k: v for k, v in manifest.files.items() if k in live}
    sums |= {relpath: file_sum(staged_path(store, relpath)) for relpath in staged}
    if index_file is not None and manifest.index:
        sums[manifest.index] = file_sum(index_file)
    return replace(manifest, files=sums)


def _prune_manifests(root: Path) -> None:
    for old in manifest_files(root)[:-KEEP_MANIFESTS]:
        old.unlink(missing_ok=True)


def next_manifest(store: Store, **changes: Any) -> Manifest:
    return replace(store.manifest, seq=store.manifest.seq + 1, **changes)


def write_atomic(path: Path, write: Callable[[BinaryIO], object], fault: str = "") -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder."""
    temp = path.with_name(temp_name(path.name))
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        faults.point(fault)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a half-written temp must not fill the disk further
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


_PLAIN_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded"}


def write_error(where: Path, exc: OSError) -> StoreError:
    """The one line for a failed store write; a full disk or quota is said plainly."""
    reason = _PLAIN_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return StoreError(f"writing to {where} failed: {reason}; the last commit is intact")
