"""Nightly runs: incremental encode, crash safety, locking, full disk, verify, jobs."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meter_batch.cli import main
from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.errors import ConfigError, InputError, StoreError
from meter_batch.ingest.encode_run import encode
from meter_batch.jobs import run_job
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from meter_batch.store.index import index_ids, load_index
from meter_batch.store.rebuild_index import rebuild_index
from meter_batch.store.verify import verify
from meter_batch.tools.samples import sample_image
from tests.conftest import make_images


def config(images: Path, store: Path, model: Path, **kw):  # type: ignore[no-untyped-def]
    spec = ModelSpec(str(model), "none")
    return EncodeConfig(images_dir=images, store=store, model=spec, workers=0, **kw)


def live(store: Path) -> dict[str, dict]:
    rows = run_query(store, "SELECT image_id, path, embedding FROM images").to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path is live twice"
    return {r["path"]: r for r in rows}


def assert_consistent(store: Path) -> None:
    problems, _ = verify(store)
    assert problems == []
    s = open_store(store)
    indexed = set(index_ids(load_index(s.path(s.manifest.index or ""))).tolist())
    assert indexed == {r["image_id"] for r in live(store).values()}


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
    }


def test_changed_touched_deleted_renamed_and_readded(tmp_path, image_dir, configs):
    images, relpaths = image_dir
    store = tmp_path / "store"
    encode(config(images, store, configs["vit"]), False)
    before = live(store)
    changed, touched, deleted, renamed, readded = relpaths[:5]
    sample_image(random.Random(99), (120, 90)).save(images / changed)  # new content
    stat = (images / touched).stat()
    os.utime(images / touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (images / deleted).unlink()
    (images / renamed).rename(images / "renamed.png")
    parked = (images / readded).read_bytes()
    (images / readded).unlink()

    summary = encode(config(images, store, configs["vit"]), False)
    counts = (summary.encoded, summary.touched, summary.superseded, summary.deleted)
    assert counts == (2, 1, 1, 3) and summary.skipped == 9
    after = live(store)
    assert set(after) == (set(relpaths) - {deleted, renamed, readded}) | {"renamed.png"}
    assert after[changed]["image_id"] not in {r["image_id"] for r in before.values()}
    assert after[touched]["image_id"] != before[touched]["image_id"]
    assert np.allclose(after[touched]["embedding"], before[touched]["embedding"])
    assert np.allclose(after["renamed.png"]["embedding"], before[renamed]["embedding"], atol=2e-3)
    assert not np.allclose(after[changed]["embedding"], before[changed]["embedding"], atol=1e-2)
    reasons = run_query(store, "SELECT path, reason FROM tombstones ORDER BY path").to_pylist()
    assert sorted((r["path"], r["reason"]) for r in reasons) == sorted(
        [
            (changed, "superseded"),
            (touched, "superseded"),
            (deleted, "deleted"),
            (renamed, "deleted"),
            (readded, "deleted"),
        ]
    )
    assert_consistent(store)

    (images / readded).write_bytes(parked)
    third = encode(config(images, store, configs["vit"]), False)
    assert (third.encoded, third.deleted) == (1, 0)
    assert readded in live(store)
    assert_consistent(store)


def test_no_change_rerun_writes_nothing(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(config(images, store, configs["vit"]), False)
    before = snapshot(store)
    again = encode(config(images, store, configs["vit"]), False)
    assert (again.encoded, again.skipped, again.commits) == (0, 14, 0)
    assert snapshot(store) == before


def test_empty_root_is_refused_instead_of_deleting_everything(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(config(images, store, configs["vit"]), False)
    shutil.rmtree(images)
    images.mkdir()
    before = snapshot(store)
    with pytest.raises(InputError, match="refusing to mark them all deleted"):
        encode(config(images, store, configs["vit"]), False)
    assert snapshot(store) == before


def test_failed_file_is_not_retried_until_it_changes(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert encode(config(images, store, configs["vit"]), False).failed == 1
    assert encode(config(images, store, configs["vit"]), False).failed == 0
    Image.new("RGB", (40, 40), "red").save(images / "broken.jpg", format="JPEG")
    fixed = encode(config(images, store, configs["vit"]), False)
    assert (fixed.encoded, fixed.failed) == (1, 0)
    assert run_query(store, "SELECT count(*) FROM failures").column(0).to_pylist() == [0]
    assert "broken.jpg" in live(store)


def test_disk_full_fails_loudly_and_keeps_the_last_commit(
    tmp_path, image_dir, configs, monkeypatch
):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(config(images, store, configs["vit"]), False)
    manifest_before = open_store(store).manifest
    make_images(images / "new", 6, seed=5)

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("meter_batch.store.commit.pq.write_table", full)
    with pytest.raises(StoreError, match="disk full"):
        encode(config(images, store, configs["vit"]), False)
    assert open_store(store).manifest == manifest_before
    assert_consistent(store)
    monkeypatch.undo()
    assert encode(config(images, store, configs["vit"]), False).encoded == 6
    assert_consistent(store)


def test_disk_full_through_the_cli_is_exit_5(tmp_path, image_dir, configs, monkeypatch, capsys):
    images, _ = image_dir

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("meter_batch.store.commit.pq.write_table", full)
    args = ["encode", str(images), "--store", str(tmp_path / "s"), "--model",
            str(configs["vit"]), "--pretrained", "none", "--workers", "0"]  # fmt: skip
    assert main(["-q", *args]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meter_batch", "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_two_concurrent_runs_exactly_one_proceeds(tmp_path, image_dir, configs):
    images, _ = image_dir
    args = ["encode", str(images), "--store", str(tmp_path / "s"), "--model",
            str(configs["vit"]), "--pretrained", "none", "--workers", "0"]  # fmt: skip
    slow = {"METER_BATCH_PAUSE_AT": "locked:4"}
    first, second = _cli(*args, env=slow), _cli(*args, env=slow)
    results = sorted([first.wait(60), second.wait(60)])
    assert results == [0, 7]
    loser = first if first.returncode == 7 else second
    assert "locked by another meter-batch run" in (loser.stderr.read() if loser.stderr else "")
    assert len(live(tmp_path / "s")) == 14


CRASH_POINTS = ["locked", "scan", "batch", "parquet", "vectors", "rename", "faiss",
                "manifest", "committed"]  # fmt: skip


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
            process = _cli(*args, env={"METER_BATCH_PAUSE_AT": "batch:0.5"})
            time.sleep(rng.uniform(2.5, 4.5))
            process.send_signal(signal.SIGKILL)
        else:
            process = _cli(*args, env={"METER_BATCH_CRASH_AT": f"{point}:{count}"})
        kills += process.wait(120) == -signal.SIGKILL
        assert main(args) == 0
        _check_against_disk(images, store)
    assert kills >= 20
    clean = tmp_path / "clean"
    encode(config(images, clean, configs["vit"]), False)
    reference, stored = live(clean), live(store)
    assert set(reference) == set(stored)
    for path, row in reference.items():
        assert np.allclose(row["embedding"], stored[path]["embedding"], atol=2e-3), path


def _check_against_disk(images: Path, store: Path) -> None:
    on_disk = {str(p.relative_to(images)) for p in images.rglob("*") if p.is_file()}
    assert set(live(store)) == on_disk
    assert_consistent(store)


def test_verify_lists_every_problem_and_rebuild_index_repairs_the_index(
    tmp_path, image_dir, configs, capsys
):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(config(images, store, configs["vit"], part_rows=5, batch_size=4), False)
    assert main(["verify", str(store)]) == 0
    s = open_store(store)
    (store / (s.manifest.index or "")).unlink()
    assert rebuild_index(store) == 14
    assert_consistent(store)

    s = open_store(store)
    part = store / s.manifest.embedding_parts[0]
    part.write_bytes(part.read_bytes()[:100])  # a part without its footer
    manifest_file = sorted((store / "manifests").glob("*.json"))[-1]
    data = json.loads(manifest_file.read_text())
    data["embedding_parts"].append(data["embedding_parts"][1])  # the same ids twice
    manifest_file.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["verify", str(store)]) == 8
    out = capsys.readouterr().out
    assert "unreadable" in out and "more than once" in out and "without a live row" in out


def test_job_runs_two_roots_and_label_sets_and_logs(tmp_path, configs):
    make_images(tmp_path / "a", 4, seed=1)
    make_images(tmp_path / "b", 3, seed=2)
    labels = Path(__file__).parents[1] / "jobs" / "labelsets" / "meter-type.toml"
    job = tmp_path / "nightly.toml"
    job.write_text(
        f'store = "store"\nlog_file = "logs/nightly.log"\n'
        f'[model]\nname = "{configs["vit"]}"\npretrained = "none"\n'
        f"[encode]\nworkers = 0\n"
        f'[[roots]]\npath = "a"\nprefix = "a/"\n[[roots]]\npath = "b"\nprefix = "b/"\n'
        f'[classify]\nlabel_sets = ["{labels}"]\n'
    )
    assert run_job(job) == 0
    paths = sorted(live(tmp_path / "store"))
    assert len(paths) == 7 and sum(p.startswith("a/") for p in paths) == 4
    counts = run_query(tmp_path / "store", "SELECT count(*) FROM latest_predictions")
    assert counts.column(0).to_pylist() == [7]
    log = (tmp_path / "logs" / "nightly.log").read_text()
    assert "encode" in log and "classify" in log and "done" in log
    assert run_job(job) == 0  # the next night: nothing new
    assert '"encoded": 0' in (tmp_path / "logs" / "nightly.log").read_text()

    job.write_text(job.read_text().replace(str(labels), str(tmp_path / "missing.toml")))
    assert run_job(job) == 2
    assert "missing.toml" in (tmp_path / "logs" / "nightly.log").read_text()


def test_unprefixed_and_prefixed_roots_do_not_mix(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(config(images, store, configs["vit"]), False)
    with pytest.raises(ConfigError, match="one unprefixed root or only prefixed"):
        encode(config(images, store, configs["vit"], path_prefix="b/"), False)


def test_a_bad_label_set_stops_the_job_before_any_encoding(tmp_path, configs):
    make_images(tmp_path / "a", 3, seed=1)
    good = Path(__file__).parents[1] / "jobs" / "labelsets" / "meter-type.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text() + "\ntop_kk = 2\n")  # a typo
    job = tmp_path / "nightly.toml"
    job.write_text(
        f'store = "store"\n[model]\nname = "{configs["vit"]}"\npretrained = "none"\n'
        f'[encode]\nworkers = 0\n[[roots]]\npath = "a"\n'
        f'[classify]\nlabel_sets = ["{good}", "{bad}"]\n'
    )
    assert run_job(job) == 2
    assert not (tmp_path / "store").exists()  # nothing encoded, nothing classified


def test_a_quiet_cron_run_still_logs_every_step_to_the_log_file(tmp_path, configs, capsys):
    from meter_batch.cli import main

    make_images(tmp_path / "a", 3, seed=1)
    job = tmp_path / "nightly.toml"
    job.write_text(
        f'store = "store"\nlog_file = "nightly.log"\n'
        f'[model]\nname = "{configs["vit"]}"\npretrained = "none"\n'
        f'[encode]\nworkers = 0\n[[roots]]\npath = "a"\n'
    )
    assert main(["-q", "run", str(job)]) == 0
    assert capsys.readouterr().err == ""  # quiet on the terminal ...
    log = (tmp_path / "nightly.log").read_text()
    assert "INFO job" in log and '"encoded": 3' in log and "done" in log  # ... not in the file


def test_a_first_run_killed_after_a_commit_can_be_queried(tmp_path, configs):
    images, store = tmp_path / "images", tmp_path / "store"
    make_images(images, 10, seed=1)
    args = ["encode", str(images), "--store", str(store), "--model", str(configs["vit"]),
            "--pretrained", "none", "--workers", "0", "--batch-size", "3",
            "--commit-every", "4"]  # fmt: skip
    process = _cli(*args, env={"METER_BATCH_CRASH_AT": "batch:3"})  # 6 images committed
    assert process.wait(120) == -signal.SIGKILL
    counts = run_query(store, "SELECT count(*) FROM images")  # the catalog of that commit
    assert counts.column(0).to_pylist() == [6]
