"""Job files (`meter-batch run`): roots, label sets, the log file, errors found first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from meter_batch.cli import main
from meter_batch.jobs import run_job
from meter_batch.store.catalog import run_query
from tests.helpers import live, make_images


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
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", "")  # nothing for cron to mail ...
    log = (tmp_path / "nightly.log").read_text()
    assert "INFO job" in log and '"encoded": 3' in log and "done" in log  # ... not in the file
    assert main(["run", str(job)]) == 0  # without -q: one JSON line per step
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["step"] for line in lines] == ["encode"]


def test_a_root_not_mounted_fails_the_job_but_not_the_other_steps(tmp_path, configs, capsys):
    from meter_batch.cli import main

    make_images(tmp_path / "a", 3, seed=1)
    make_images(tmp_path / "c", 2, seed=3)
    labels = Path(__file__).parents[1] / "jobs" / "labelsets" / "meter-type.toml"
    job = tmp_path / "nightly.toml"
    job.write_text(
        f'store = "store"\nlog_file = "nightly.log"\n'
        f'[model]\nname = "{configs["vit"]}"\npretrained = "none"\n[encode]\nworkers = 0\n'
        f'[[roots]]\npath = "a"\nprefix = "a/"\n[[roots]]\npath = "share-b"\nprefix = "b/"\n'
        f'[[roots]]\npath = "c"\nprefix = "c/"\n[classify]\nlabel_sets = ["{labels}"]\n'
    )
    assert main(["-q", "run", str(job)]) == 3  # the missing root's code (input missing)
    printed = capsys.readouterr()
    assert printed.out == ""
    errors = printed.err.strip().splitlines()
    assert len(errors) == 2 and "share-b" in errors[0] and "failed" in errors[0]
    assert "1 step(s) failed" in errors[1] and "share-b" in errors[1]
    paths = sorted(live(tmp_path / "store"))  # the roots before and after it were encoded
    assert (
        sum(p.startswith("a/") for p in paths) == 3 and sum(p.startswith("c/") for p in paths) == 2
    )
    counts = run_query(tmp_path / "store", "SELECT count(*) FROM latest_predictions")
    assert counts.column(0).to_pylist() == [5]  # and the label set was applied to them


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
