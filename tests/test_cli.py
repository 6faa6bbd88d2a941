"""The CLI: one JSON summary line on success; one error line and a documented code otherwise."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from meter_batch.cli import build_parser, main
from meter_batch.errors import EXIT_CODES, StoreLockedError
from meter_batch.store import commit as store_module
from meter_batch.store.commit import LOCK_FILE, locked


def encode_args(images: Path, store: Path, config: Path, pretrained: str = "none") -> list[str]:
    return ["encode", str(images), "--store", str(store), "--model", str(config),
            "--pretrained", pretrained, "--workers", "0"]  # fmt: skip


def test_encode_prints_one_json_summary(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    assert main(encode_args(images, tmp_path / "s", configs["vit"])) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    summary = json.loads(out[0])
    assert {k: summary[k] for k in ("scanned", "encoded", "failed")} == {
        "scanned": 14,
        "encoded": 14,
        "failed": 0,
    }
    assert summary["seconds"] > 0 and summary["images_per_s"] > 0


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("meter-batch: error: ")
    return err[0]


def test_missing_images_dir_exits_3(tmp_path, configs, capsys):
    assert main(encode_args(tmp_path / "nope", tmp_path / "s", configs["vit"])) == 3
    assert "images directory not found" in _one_error_line(capsys)
    assert not (tmp_path / "s").exists()


def test_unknown_model_exits_4(tmp_path, image_dir, capsys):
    images, _ = image_dir
    code = main(["encode", str(images), "--store", str(tmp_path / "s"), "--model", "RN5O",
                 "--pretrained", "none"])  # fmt: skip
    assert code == 4
    assert "unknown model 'RN5O'" in _one_error_line(capsys)


def test_model_mismatch_exits_6_and_leaves_store_alone(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    store = tmp_path / "s"
    assert main(encode_args(images, store, configs["vit"])) == 0
    before = sorted(p.name for p in store.rglob("*"))
    capsys.readouterr()
    assert main(encode_args(images, store, configs["resnet"])) == 6
    line = _one_error_line(capsys)
    assert "written by another model" in line and "architecture" in line
    assert sorted(p.name for p in store.rglob("*")) == before


def test_other_seed_is_another_model(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    store = tmp_path / "s"
    assert main(encode_args(images, store, configs["vit"])) == 0
    from meter_batch.config import EncodeConfig, ModelSpec
    from meter_batch.errors import ModelMismatchError
    from meter_batch.ingest.encode_run import encode

    spec = ModelSpec(str(configs["vit"]), "none", seed=1)
    with pytest.raises(ModelMismatchError, match="seed"):
        encode(EncodeConfig(images_dir=images, store=store, model=spec, workers=0), False)


def test_locked_store_exits_7(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    with locked(tmp_path / "s"):
        assert main(encode_args(images, tmp_path / "s", configs["vit"])) == 7
    assert "locked by another" in _one_error_line(capsys)


def test_a_failed_first_run_leaves_no_store_folder(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    args = encode_args(images, tmp_path / "new" / "s", configs["vit"], "/nowhere/model.pt")
    assert main(args) == 4
    assert "checkpoint file not found" in _one_error_line(capsys)
    assert not (tmp_path / "new" / "s").exists()  # not a half store that verify calls no store
    (tmp_path / "kept").mkdir()  # a folder the user made stays, with only the lock file
    assert main(encode_args(images, tmp_path / "kept", configs["vit"], "/nowhere/model.pt")) == 4
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [LOCK_FILE]
    assert main(encode_args(images, tmp_path / "new" / "s", configs["vit"])) == 0
    assert (tmp_path / "new" / "s" / "store.json").is_file()  # a run that works keeps it


def test_a_lock_on_a_removed_lock_file_is_taken_again(tmp_path, monkeypatch):
    with locked(tmp_path / "s") as handle:
        assert store_module._is_current_lock_file(tmp_path / "s", handle)
        (tmp_path / "s" / LOCK_FILE).unlink()  # as a failed first run does before it unlocks
        assert not store_module._is_current_lock_file(tmp_path / "s", handle)
    answers = iter([False, True])  # the first file taken was removed meanwhile
    monkeypatch.setattr(store_module, "_is_current_lock_file", lambda root, h: next(answers))
    with locked(tmp_path / "t"):
        assert next(answers, "used up") == "used up"  # asked twice: retaken once
    monkeypatch.setattr(store_module, "_is_current_lock_file", lambda root, h: False)
    with pytest.raises(StoreLockedError, match="being set up"), locked(tmp_path / "u"):
        pass


def test_a_run_whose_new_folder_vanishes_before_it_opens_the_lock_makes_it_again(
    tmp_path, monkeypatch
):
    root, between, first_done = tmp_path / "s", threading.Event(), threading.Event()
    real_open = builtins.open

    def open_when_the_first_is_done(path, *args, **kwargs):  # B, paused after its mkdir
        if threading.current_thread().name == "B":
            between.set()
            first_done.wait(5)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "open", open_when_the_first_is_done, raising=False)
    outcome: dict[str, object] = {}

    def second_run() -> None:
        try:
            with locked(root):
                outcome["locked"] = (root / LOCK_FILE).exists()
        except Exception as exc:  # the bug: StoreError "cannot create store", exit 5
            outcome["locked"] = exc

    second = threading.Thread(target=second_run, name="B")
    with pytest.raises(RuntimeError), locked(root):  # a first run that fails early
        second.start()
        assert between.wait(5)
        raise RuntimeError("checkpoint file not found")
    assert not root.exists()  # the failed first run removed the folder it made
    first_done.set()
    second.join(5)
    assert outcome == {"locked": True}  # made the folder again and locked its lock file
    assert not root.exists()  # and, never a store either, removed it as its own


def test_unwritable_store_exits_5(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(encode_args(images, blocker / "store", configs["vit"])) == 5
    assert "cannot create store" in _one_error_line(capsys)


def test_bad_setting_exits_2(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    args = [*encode_args(images, tmp_path / "s", configs["vit"]), "--batch-size", "0"]
    assert main(args) == 2
    # named by the flag the user typed, not the config-file key
    assert "--batch-size must be an integer >= 1" in _one_error_line(capsys)
    args = [*encode_args(images, tmp_path / "s", configs["vit"]), "--prefix", "/abs"]
    assert main(args) == 2
    assert "--prefix must look like 'name/'" in _one_error_line(capsys)
    typed = "a and exact exclude each other"  # a value is shown as typed, never rewritten
    assert main([*encode_args(images, tmp_path / "s", configs["vit"]), "--prefix", typed]) == 2
    assert f"got '{typed}'" in _one_error_line(capsys)
    args = [*encode_args(images, tmp_path / "s", configs["vit"]), "--exact"]
    assert main([*args, "--jpeg-decode", "device"]) == 2
    assert "--jpeg-decode 'device' and --exact exclude each other" in _one_error_line(capsys)


def test_every_exit_code_is_in_the_help_and_readme():
    help_text = build_parser().format_help()
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in help_text
        assert f"| {code} |" in readme, code


def test_every_command_is_documented_in_readme():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"meter-batch {name}" in readme, name


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "meter_batch", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("meter-batch ")


def test_a_device_this_machine_lacks_leaves_no_store_behind(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    store = tmp_path / "s"
    args = [*encode_args(images, store, configs["vit"]), "--precision", "fp16", "--device", "cpu"]
    assert main(args) == 2
    assert "fp16" in _one_error_line(capsys)
    assert not (store / "store.json").exists()  # the store is not bound to that model
    assert main(encode_args(images, store, configs["vit"])) == 0  # a later run starts clean


def test_paths_in_the_way_are_one_line_errors(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "utf16.toml").write_text('store = "s"\n', encoding="utf-16")  # as Notepad
    cases = [
        (["classify", "--store", str(tmp_path / "s"), "--labels", str(folder)], "is a folder"),
        (["run", str(folder)], "is a folder, not a TOML file"),
        (["bench", "encode", "--count", "0", "--dir", str(tmp_path / "b")], "--count must be"),
        (["bench", "rescan", "--files", "0", "--dir", str(tmp_path / "b")], "--files must be"),
        (["bench", "classify", "--n", "-5", "--dir", str(tmp_path / "b")], "--n must be"),
        (["bench", "classify", "--dim", "0", "--dir", str(tmp_path / "b")], "--dim must be"),
        (
            ["bench", "encode", "--count", "2", "--batch-size", "0", "--dir", str(tmp_path / "b")],
            "--batch-size must be",
        ),
        (["run", str(tmp_path / "utf16.toml")], "is not UTF-8 text"),
        (["finetune", str(tmp_path / "c.csv"), "--out", str(tmp_path / "file")], "is a file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err  # `run` logs it as "job ... failed"
    assert not (tmp_path / "b" / "store").exists()
    for argv in (["bench", "classify", "--count", "4"], ["bench", "encode", "--n", "5"]):
        with pytest.raises(SystemExit) as exited:  # each benchmark has only its own options
            main([*argv, "--dir", str(tmp_path / "b")])
        assert exited.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


def test_a_job_log_file_that_cannot_be_opened_is_a_setting_error(tmp_path, configs, capsys):
    (tmp_path / "images").mkdir()
    job = tmp_path / "job.toml"
    job.write_text(
        f'store = "s"\nlog_file = "{tmp_path / "file" / "x.log"}"\n'
        f'[model]\nname = "{configs["vit"]}"\npretrained = "none"\n'
        '[[roots]]\npath = "images"\n'
    )
    (tmp_path / "file").write_text("a file where the log folder should be")
    assert main(["run", str(job)]) == 2
    assert "cannot be opened for writing" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # found before any work


def test_a_job_run_from_python_prints_no_info_lines(tmp_path, configs):
    """A library user who set up no logging: the job's steps go to its log_file only."""
    images = tmp_path / "a"
    images.mkdir()
    job = tmp_path / "job.toml"
    job.write_text(
        f'store = "s"\nlog_file = "job.log"\n[model]\nname = "{configs["vit"]}"\n'
        f'pretrained = "none"\n[encode]\nworkers = 0\n[[roots]]\npath = "a"\n'
    )
    (images / "x.png").write_bytes((Path(__file__).parent / "conftest.py").read_bytes()[:10])
    code = f"import pathlib, meter_batch.jobs as j; j.run_job(pathlib.Path({str(job)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "scanning" not in done.stderr and "job" not in done.stderr, done.stderr
    log = (tmp_path / "job.log").read_text()
    assert "scanning" in log and "done" in log  # every step in the job's own log
