"""Walk an image directory: a deterministic, streaming list of candidate files.

Policy (documented in the README):
- extensions: jpg, jpeg, png, webp, bmp, tif, tiff, gif (any case);
- names starting with "." (hidden files and folders) are skipped;
- symlinked files are followed; symlinked folders are not (no loops, no escapes);
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

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_EXTENSIONS_BYTES = tuple(ext.encode() for ext in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ScannedFile:
    relpath: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanFailure:
    relpath: bytes
    kind: str
    message: str


def is_image_name(name: bytes) -> bool:
    return name.lower().endswith(_EXTENSIONS_BYTES)


def scan_images(root: Path) -> Iterator[ScannedFile | ScanFailure]:
    """Yield every image file under ``root`` (and every entry that could not be read)."""
    yield from _walk(os.fsencode(root), b"")


def _walk(root: bytes, relative_dir: bytes) -> Iterator[ScannedFile | ScanFailure]:
    directory = os.path.join(root, relative_dir) if relative_dir else root
    try:
        with os.scandir(directory) as iterator:
            entries = sorted(iterator, key=lambda entry: entry.name)
    except OSError as exc:
        yield ScanFailure(relative_dir or b".", _kind_of(exc), exc.strerror or str(exc))
        return
    for entry in entries:
        if entry.name.startswith(b"."):
            continue
        relpath = os.path.join(relative_dir, entry.name) if relative_dir else entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(root, relpath)
            elif is_image_name(entry.name):
                yield from _stat_file(entry, relpath)
        except OSError as exc:
            yield ScanFailure(relpath, _kind_of(exc), exc.strerror or str(exc))


def _stat_file(entry: os.DirEntry[bytes], relpath: bytes) -> Iterator[ScannedFile | ScanFailure]:
    try:
        info = entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        if entry.is_symlink():
            yield ScanFailure(relpath, "vanished", "broken symbolic link")
        return  # deleted while we walked: it was never there for this run
    if stat.S_ISREG(info.st_mode):
        yield ScannedFile(relpath, info.st_size, info.st_mtime_ns)


def _kind_of(exc: OSError) -> str:
    return "permission_denied" if isinstance(exc, PermissionError) else "unreadable"


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


def collect_work(root: Path, chunk: int = 65_536) -> WorkList:
    """Run the scan to completion and pack the result."""
    paths: list[pa.Array] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    pending: list[bytes] = []
    failures: list[ScanFailure] = []
    for item in scan_images(root):
        if isinstance(item, ScanFailure):
            failures.append(item)
            continue
        pending.append(item.relpath)
        sizes.append(item.size)
        mtimes.append(item.mtime_ns)
        if len(pending) >= chunk:
            paths.append(pa.array(pending, pa.binary()))
            pending = []
    paths.append(pa.array(pending, pa.binary()))
    combined = pa.concat_arrays(paths)
    return WorkList(
        paths=combined,
        sizes=np.asarray(sizes, dtype=np.int64),
        mtimes_ns=np.asarray(mtimes, dtype=np.int64),
        failures=failures,
    )
