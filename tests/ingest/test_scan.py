"""The walk: which files, in which order, and what it records when it cannot look."""

from __future__ import annotations

import os
from pathlib import Path

from meter_batch.ingest.scan import ScanFailure, ScannedFile, collect_work, scan_images
from meter_batch.store.records import FailureKind


def _touch(root: Path, relative: str, content: bytes = b"x") -> None:
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(content)


def test_walk_finds_image_extensions_in_any_case_in_a_fixed_order(tmp_path):
    names = ["b/IMG_1.JPG", "a/x.jpeg", "a/y.PnG", "c.webp", "d.bmp", "e.tif", "f.TIFF",
             "g.gif", "a/z/deep.jpg", "notes.txt", "a/photo.jpg.bak", "h.psd"]  # fmt: skip
    for name in names:
        _touch(tmp_path, name)
    found = [i.relpath.decode() for i in scan_images(tmp_path) if isinstance(i, ScannedFile)]
    assert found == ["a/x.jpeg", "a/y.PnG", "a/z/deep.jpg", "b/IMG_1.JPG", "c.webp", "d.bmp",
                     "e.tif", "f.TIFF", "g.gif"]  # fmt: skip


def test_hidden_entries_and_symlinked_folders_are_skipped(tmp_path):
    _touch(tmp_path, "real/a.jpg")
    _touch(tmp_path, ".cache/b.jpg")
    _touch(tmp_path, "real/.c.jpg")
    os.symlink(tmp_path / "real", tmp_path / "loop")  # a folder link: not followed
    os.symlink(tmp_path / "real" / "a.jpg", tmp_path / "link.jpg")  # a file link: followed
    found = sorted(i.relpath for i in scan_images(tmp_path) if isinstance(i, ScannedFile))
    assert found == [b"link.jpg", b"real/a.jpg"]


def test_broken_symlink_is_a_failure(tmp_path):
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    items = list(scan_images(tmp_path))
    assert items == [ScanFailure(b"dangling.jpg", FailureKind.VANISHED, "broken symbolic link")]


def test_a_fifo_or_socket_with_an_image_name_is_a_failure_never_opened(tmp_path):
    import socket

    os.mkfifo(tmp_path / "pipe.jpg")  # opened for reading, it would block the run for good
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.png"))
        items = list(scan_images(tmp_path))
    assert items == [
        ScanFailure(b"pipe.jpg", FailureKind.UNIDENTIFIED,
                    "a named pipe (FIFO), not a regular file: never opened"),
        ScanFailure(b"sock.png", FailureKind.UNIDENTIFIED,
                    "a socket, not a regular file: never opened"),
    ]  # fmt: skip


def test_a_fifo_is_recorded_once_and_the_nightly_run_does_not_block(tmp_path, configs):
    from tests.helpers import encode_images, make_images

    make_images(tmp_path / "images", 2)
    os.mkfifo(tmp_path / "images" / "pipe.jpg")
    first = encode_images(tmp_path / "images", tmp_path / "s", configs["vit"], workers=0)
    assert (first.encoded, first.failed) == (2, 1)
    again = encode_images(tmp_path / "images", tmp_path / "s", configs["vit"], workers=0)
    assert (again.encoded, again.failed, again.commits) == (0, 0, 0)


def test_non_utf8_names_survive_as_bytes(tmp_path):
    raw = "メーター".encode("shift_jis") + b".jpg"
    with open(os.path.join(os.fsencode(tmp_path), raw), "wb") as handle:
        handle.write(b"x")
    work = collect_work(tmp_path)
    assert len(work) == 1 and work.relpath(0) == raw
    assert work.sizes.tolist() == [1]


def test_unreadable_folder_is_recorded_and_the_walk_goes_on(tmp_path, monkeypatch):
    _touch(tmp_path, "locked/a.jpg")
    _touch(tmp_path, "open/b.jpg")
    real_scandir = os.scandir

    def scandir(path):
        # chmod 000 does not stop root (CI runs as root), so refuse the folder here
        if os.fsencode(path).endswith(b"/locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(scan_images(tmp_path))
    assert items == [
        ScanFailure(b"locked", FailureKind.PERMISSION_DENIED, "Permission denied"),
        ScannedFile(b"open/b.jpg", 1, (tmp_path / "open/b.jpg").stat().st_mtime_ns),
    ]
