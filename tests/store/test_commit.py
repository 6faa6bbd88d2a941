"""Commits: SIGKILL at any moment, a full disk, concurrent runs and the store lock."""

from __future__ import annotations

import builtins
import errno
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from meter_batch.cli import main
from meter_batch.errors import StoreError, StoreLockedError
from meter_batch.ingest.encode_run import encode
from meter_batch.store import commit as store_module
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import LOCK_FILE, locked, open_store
from tests.helpers import (
    ForkedRun,
    assert_consistent,
    encode_args,
    encode_config,
    live,
    make_images,
    one_error_line,
)


def test_disk_full_fails_loudly_and_keeps_the_last_commit(
    tmp_path, image_dir, configs, monkeypatch
):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(encode_config(images, store, configs["vit"], workers=0), False)
    manifest_before = open_store(store).manifest
    make_images(images / "new", 6, seed=5)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("meter_batch.store.commit.pq.write_table", full)
    with pytest.raises(StoreError, match="disk full"):
        encode(encode_config(images, store, configs["vit"], workers=0), False)
    assert open_store(store).manifest == manifest_before
    assert_consistent(store)
    monkeypatch.undo()
    assert encode(encode_config(images, store, configs["vit"], workers=0), False).encoded == 6
    assert_consistent(store)


def test_disk_full_through_the_cli_is_exit_5(tmp_path, image_dir, configs, monkeypatch, capsys):
    images, _ = image_dir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("meter_batch.store.commit.pq.write_table", full)
    args = ["encode", str(images), "--store", str(tmp_path / "s"), "--model",
            str(configs["vit"]), "--pretrained", "none", "--workers", "0"]  # fmt: skip
    assert main(["-q", *args]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0]


def test_two_concurrent_runs_exactly_one_proceeds(tmp_path, image_dir, configs):
    images, _ = image_dir
    args = ["encode", str(images), "--store", str(tmp_path / "s"), "--model",
            str(configs["vit"]), "--pretrained", "none", "--workers", "0"]  # fmt: skip
    slow = {"METER_BATCH_PAUSE_AT": "locked:2"}  # the winner holds the lock 2 s: overlap
    errors = [tmp_path / "first.err", tmp_path / "second.err"]
    runs = [ForkedRun(args, env=slow, stderr=path) for path in errors]
    codes = [run.wait(60) for run in runs]
    assert sorted(code or 0 for code in codes) == [0, 7]
    loser = errors[codes.index(7)]
    assert "locked by another meter-batch run" in loser.read_text()
    assert len(live(tmp_path / "s")) == 14


CRASH_POINTS = ["locked", "scan", "batch", "parquet", "vectors", "rename", "faiss",
                "manifest", "committed"]  # fmt: skip


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_and_duplicates_nothing(tmp_path, configs):
    """At least 20 SIGKILLs at every phase; after each, a re-run must leave a store that
    verifies, holds every image exactly once, embeds like a clean run, and reads in DuckDB."""
    rng = random.Random(20261126)
    images, store = tmp_path / "images", tmp_path / "store"
    make_images(images, 10, seed=1)
    args = ["encode", str(images), "--store", str(store), "--model", str(configs["vit"]),
            "--pretrained", "none", "--workers", "0", "--batch-size", "3",
            "--commit-every", "4"]  # fmt: skip
    repeated = ["batch", "parquet", "vectors", "rename", "manifest", "committed"]
    plan = [(p, 1) for p in CRASH_POINTS] + [(rng.choice(repeated), 2) for _ in range(9)]
    plan += [("timer", 0)] * 5  # and kills from outside, at a random moment of the run
    kills = 0
    for cycle, (point, count) in enumerate(plan):
        make_images(images / f"night-{cycle:02d}", 6, seed=100 + cycle)  # two commits' worth
        if cycle % 4 == 3:
            next(images.rglob("*.png")).unlink()
        if point == "timer":
            # slowed at each batch so that a random moment falls inside the run
            process = ForkedRun(args, env={"METER_BATCH_PAUSE_AT": "batch:0.5"})
            time.sleep(rng.uniform(0.2, 1.0))  # the run takes >= 1 s: two batches of 0.5 s
            process.send_signal(signal.SIGKILL)
        else:
            process = ForkedRun(args, env={"METER_BATCH_CRASH_AT": f"{point}:{count}"})
        code = process.wait(120)
        assert code is not None, f"cycle {cycle} ({point}): the forked run hung: {_state(process)}"
        kills += code == -signal.SIGKILL
        assert main(args) == 0
        _check_against_disk(images, store)
    assert kills >= 20
    clean = tmp_path / "clean"
    encode(encode_config(images, clean, configs["vit"], workers=0), False)
    reference, stored = live(clean), live(store)
    assert set(reference) == set(stored)
    for path, row in reference.items():
        assert np.allclose(row["embedding"], stored[path]["embedding"], atol=2e-3), path


def _state(run: ForkedRun) -> str:
    """What a hung child is waiting in, thread by thread (then it is killed)."""
    pid = run.process.pid
    tasks = sorted(Path(f"/proc/{pid}/task").iterdir()) if pid is not None else []
    waits = [(t / "wchan").read_text() for t in tasks if (t / "wchan").exists()]
    run.send_signal(signal.SIGKILL)
    return f"{len(tasks)} threads waiting in {waits}"


def _check_against_disk(images: Path, store: Path) -> None:
    on_disk = {str(p.relative_to(images)) for p in images.rglob("*") if p.is_file()}
    assert set(live(store)) == on_disk
    assert_consistent(store)


def test_a_first_run_killed_after_a_commit_can_be_queried(tmp_path, configs):
    images, store = tmp_path / "images", tmp_path / "store"
    make_images(images, 10, seed=1)
    args = ["encode", str(images), "--store", str(store), "--model", str(configs["vit"]),
            "--pretrained", "none", "--workers", "0", "--batch-size", "3",
            "--commit-every", "4"]  # fmt: skip
    process = ForkedRun(args, env={"METER_BATCH_CRASH_AT": "batch:3"})  # 6 images committed
    assert process.wait(120) == -signal.SIGKILL
    counts = run_query(store, "SELECT count(*) FROM images")  # the catalog of that commit
    assert counts.column(0).to_pylist() == [6]


def test_locked_store_exits_7(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    with locked(tmp_path / "s"):
        assert main(encode_args(images, tmp_path / "s", configs["vit"])) == 7
    assert "locked by another" in one_error_line(capsys)


def test_a_failed_first_run_leaves_no_store_folder(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    args = encode_args(images, tmp_path / "new" / "s", configs["vit"], "/nowhere/model.pt")
    assert main(args) == 4
    assert "checkpoint file not found" in one_error_line(capsys)
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
