"""The walk and the settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meter_batch.config import EncodeConfig, ModelSpec, from_mapping
from meter_batch.errors import ConfigError
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

    def scandir(path):  # type: ignore[no-untyped-def]
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


def test_config_from_toml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "encode.toml"
    path.write_text('images_dir = "/data"\nstore = "/s"\nbatchsize = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key.*batchsize.*valid keys"):
        EncodeConfig.from_toml(path)


def test_config_from_toml_builds_nested_dataclasses(tmp_path):
    path = tmp_path / "encode.toml"
    path.write_text(
        'images_dir = "~/photos"\nstore = "/s"\nbatch_size = 128\nworkers = 3\n'
        '[model]\nname = "RN50"\npretrained = "/m/model.pt"\n'
    )
    config = EncodeConfig.from_toml(path)
    assert config.images_dir == Path("~/photos").expanduser()
    assert config.model == ModelSpec("RN50", "/m/model.pt")
    assert (config.batch_size, config.workers, config.device) == (128, 3, "auto")
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) arch"):
        from_mapping(EncodeConfig, {"images_dir": "a", "store": "b", "model": {"arch": "x"}}, "t")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "gpu"}, "device must be one of auto, cpu, cuda; got 'gpu'"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"batch_size": True}, "batch_size must be an integer >= 1"),
    ],
)
def test_bad_values_name_the_setting_and_the_choices(changes, message):
    with pytest.raises(ConfigError, match=message):
        EncodeConfig(images_dir=Path("a"), store=Path("b"), **changes)
