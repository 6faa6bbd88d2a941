"""Walk an image directory: a deterministic, streaming list of candidate files.

Policy (documented in the README):
- extensions: jpg, jpeg, png, webp, bmp, tif, tiff, gif, heic, heif, avif (any case);
- names starting with "." (hidden files and folders) are skipped;
- symlinked files are followed; symlinked folders are not (no loops, no escapes);
- a FIFO, device or socket with an image's name is a failure row (unidentified), never
  opened: reading a FIFO would block the run;
- order: depth-first, names sorted bytewise, so every run sees the same order;
- paths are bytes relative to the root, so names that are not UTF-8 survive intact.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from meter_batch.store.records import FailureKind

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
_EXTENSIONS_BYTES = tuple(ext.encode() for ext in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ScannedFile:
    relpath: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanFailure:
    relpath: bytes  # a folder that could not be listed, or a file that could not be read
    kind: FailureKind
    message: str


def scan_images(root: Path) -> Iterator[ScannedFile | ScanFailure]:
    """Every image file under ``root`` (and every entry that could not be read)."""
    work = collect_work(root)
    yield from work.failures
    for position in range(len(work)):
        yield ScannedFile(
            work.relpath(position), int(work.sizes[position]), int(work.mtimes_ns[position])
        )


class _Walk:
    """The walk's accumulators. One stat per image file and no per-file objects: a nightly
    no-change run is mostly this loop, so it is kept close to a bare os.scandir walk."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.paths: list[bytes] = []
        self.sizes: list[int] = []
        self.mtimes: list[int] = []
        self.failures: list[ScanFailure] = []

    def folder(self, relative_dir: bytes) -> None:
        directory = self.root + b"/" + relative_dir if relative_dir else self.root
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=_name)
        except OSError as exc:
            self.failures.append(ScanFailure(relative_dir or b".", _kind_of(exc), _reason(exc)))
            return
        prefix = relative_dir + b"/" if relative_dir else b""
        for entry in entries:
            name = entry.name
            if name[:1] == b".":
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    self.folder(prefix + name)
                elif name.lower().endswith(_EXTENSIONS_BYTES):
                    self._file(entry, prefix + name)
            except OSError as exc:
                self.failures.append(ScanFailure(prefix + name, _kind_of(exc), _reason(exc)))

    def _file(self, entry: os.DirEntry[bytes], relpath: bytes) -> None:
        try:
            info = entry.stat()
        except FileNotFoundError:
            if entry.is_symlink():
                self.failures.append(
                    ScanFailure(relpath, FailureKind.VANISHED, "broken symbolic link")
                )
            return  # deleted while we walked: it was never there for this run
        if stat.S_ISREG(info.st_mode):
            self.paths.append(relpath)
            self.sizes.append(info.st_size)
            self.mtimes.append(info.st_mtime_ns)
        elif not stat.S_ISDIR(info.st_mode):  # opening a FIFO would block the run for good
            what = _SPECIAL.get(stat.S_IFMT(info.st_mode), "not a regular file")
            message = f"{what}, not a regular file: never opened"
            self.failures.append(ScanFailure(relpath, FailureKind.UNIDENTIFIED, message))


_SPECIAL = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _name(entry: os.DirEntry[bytes]) -> bytes:
    return entry.name


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _kind_of(exc: OSError) -> FailureKind:
    if isinstance(exc, PermissionError):
        return FailureKind.PERMISSION_DENIED
    return FailureKind.UNREADABLE


@dataclass
class WorkList:
    """Scanned files held compactly: Arrow binary paths and numpy columns.

    Decoder workers read from it after fork; Arrow buffers are not refcounted per item,
    so forked workers do not copy the list page by page as they would a list of bytes.
    """

    paths: pa.BinaryArray
    sizes: np.ndarray
    mtimes_ns: np.ndarray
    failures: list[ScanFailure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sizes)

    def relpath(self, index: int) -> bytes:
        return self.paths[index].as_py()


def collect_work(root: Path) -> WorkList:
    """Walk ``root`` and pack the result."""
    walk = _Walk(os.fsencode(root).rstrip(b"/") or b"/")
    walk.folder(b"")
    return WorkList(
        paths=pa.array(walk.paths, pa.binary()),
        sizes=np.asarray(walk.sizes, dtype=np.int64),
        mtimes_ns=np.asarray(walk.mtimes, dtype=np.int64),
        failures=walk.failures,
    )
