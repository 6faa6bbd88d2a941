"""The CLI: one JSON summary line on success; one error line and a documented code otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meter_batch.cli import build_parser, main
from meter_batch.errors import EXIT_CODES
from tests.helpers import encode_args, one_error_line


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


def test_missing_images_dir_exits_3(tmp_path, configs, capsys):
    assert main(encode_args(tmp_path / "nope", tmp_path / "s", configs["vit"])) == 3
    assert "images directory not found" in one_error_line(capsys)
    assert not (tmp_path / "s").exists()


def test_unknown_model_exits_4(tmp_path, image_dir, capsys):
    images, _ = image_dir
    code = main(["encode", str(images), "--store", str(tmp_path / "s"), "--model", "RN5O",
                 "--pretrained", "none"])  # fmt: skip
    assert code == 4
    assert "unknown model 'RN5O'" in one_error_line(capsys)


def test_model_mismatch_exits_6_and_leaves_store_alone(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    store = tmp_path / "s"
    assert main(encode_args(images, store, configs["vit"])) == 0
    before = sorted(p.name for p in store.rglob("*"))
    capsys.readouterr()
    assert main(encode_args(images, store, configs["resnet"])) == 6
    line = one_error_line(capsys)
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


def test_unwritable_store_exits_5(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(encode_args(images, blocker / "store", configs["vit"])) == 5
    assert "cannot create store" in one_error_line(capsys)


def test_bad_setting_exits_2(tmp_path, image_dir, configs, capsys):
    images, _ = image_dir
    args = [*encode_args(images, tmp_path / "s", configs["vit"]), "--batch-size", "0"]
    assert main(args) == 2
    # named by the flag the user typed, not the config-file key
    assert "--batch-size must be an integer >= 1" in one_error_line(capsys)
    args = [*encode_args(images, tmp_path / "s", configs["vit"]), "--prefix", "/abs"]
    assert main(args) == 2
    assert "--prefix must look like 'name/'" in one_error_line(capsys)
    typed = "a and exact exclude each other"  # a value is shown as typed, never rewritten
    assert main([*encode_args(images, tmp_path / "s", configs["vit"]), "--prefix", typed]) == 2
    assert f"got '{typed}'" in one_error_line(capsys)
    args = [*encode_args(images, tmp_path / "s", configs["vit"]), "--exact"]
    assert main([*args, "--jpeg-decode", "device"]) == 2
    assert "--jpeg-decode 'device' and --exact exclude each other" in one_error_line(capsys)


def test_every_exit_code_is_in_the_help_and_readme():
    help_text = build_parser().format_help()
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in help_text
        assert f"| {code} |" in readme, code


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
    assert "fp16" in one_error_line(capsys)
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


def test_store_and_image_mistakes_are_one_line_errors(store, tmp_path, capsys):
    images, root, _ = store
    assert main(["search", "--store", str(root), "--image", str(images)]) == 3
    assert "is a folder" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nothing")]) == 5  # as search, classify, query
    assert "not a meter-batch store" in capsys.readouterr().err


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_no_worker_outlives_the_run(tmp_path, configs):
    """systemd's stop: exit 143, one line, the last commit intact, the decode workers gone
    within a second of the exit (not DataLoader's 5 s per worker)."""
    import signal
    import time

    from tests.helpers import assert_consistent, make_images

    images, store = tmp_path / "images", tmp_path / "s"
    make_images(images, 6)
    assert main(encode_args(images, store, configs["vit"])) == 0
    make_images(images / "more", 60, seed=9)
    argv = encode_args(images, store, configs["vit"])
    argv[argv.index("--workers") + 1] = "2"
    run = subprocess.Popen(
        [sys.executable, "-m", "meter_batch", "-q", *argv, "--batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "METER_BATCH_PAUSE_AT": "batch:120"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(_children(run.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = _children(run.pid)
    assert len(workers) >= 2, "the decode workers never started"
    time.sleep(1.0)  # the first batch is encoded: the run sleeps at the `batch` point
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 143, err
    assert err.strip().splitlines() == ["meter-batch: stopped (SIGTERM); the last commit is intact"]
    time.sleep(1.0)
    assert not {w for w in workers if Path(f"/proc/{w}").exists()}, "a worker outlived the run"
    assert_consistent(store)


@pytest.mark.parametrize("output", ["json", "csv"])
def test_a_closed_pipe_stops_quietly_with_141(tmp_path, configs, output):
    """`query ... | head -1`: the reader goes away mid-output; no BrokenPipeError
    traceback, nothing on stderr, exit 141 (as a CLI the pipe's signal ends)."""
    from tests.helpers import make_images

    images, store = tmp_path / "images", tmp_path / "s"
    make_images(images, 3)
    assert main(encode_args(images, store, configs["vit"])) == 0
    sql = "SELECT range AS n, 'row ' || range AS text FROM range(300000)"
    run = subprocess.Popen(
        [sys.executable, "-m", "meter_batch", "query", str(store), sql, "--format", output],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert run.stdout is not None and run.stderr is not None
    first = run.stdout.readline()
    run.stdout.close()  # as head -1 does after its line
    err = run.stderr.read().decode()
    assert run.wait(timeout=60) == 141, err
    assert err == "" and first.strip()


def _library_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify` made to meet a library's warning, as torch warns from its C++ code."""
    import warnings

    import meter_batch.store.verify as verify_module

    real = verify_module.verify

    def warning_verify(*args: Any, **kwargs: Any) -> Any:
        warnings.warn_explicit(
            "The given NumPy array is not writable", UserWarning, "torch/_tensor.py", 1
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(verify_module, "verify", warning_verify)


def test_no_library_warning_reaches_the_terminal_but_v_logs_it(store, capsys, monkeypatch):
    _, root, _ = store
    _library_warns(monkeypatch)
    capsys.readouterr()
    assert main(["verify", str(root)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["verify", str(root), "-v"]) == 0  # -v after the sub-command, as before it
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(
        "meter-batch: UserWarning: The given NumPy array is not writable (_tensor.py:1)"
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_q_and_v_go_before_or_after_the_sub_command(store, capsys, where):
    _, root, _ = store
    argv = ["-q", "verify", str(root)] if where == "before" else ["verify", str(root), "-q"]
    parser_args = build_parser().parse_args(argv)
    assert (parser_args.quiet, parser_args.verbose) == (True, False)
    assert main(["-v", "verify", str(root), "-q"]) == 2
    assert one_error_line(capsys) == "meter-batch: error: -q and -v contradict each other: give one"


# --- one grammar: the store as STORE, --store STORE or METER_BATCH_STORE ---------------


def _query_n(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out.strip()


def test_every_store_command_takes_store_as_positional_flag_or_environment(
    store, capsys, monkeypatch
):
    _, root, _ = store
    sql = "SELECT count(*) AS n FROM images"
    expected = (0, '"n"\n14')
    assert _query_n(capsys, "query", str(root), sql, "--format", "csv") == expected
    assert _query_n(capsys, "query", "--store", str(root), sql, "--format", "csv") == expected
    monkeypatch.setenv("METER_BATCH_STORE", str(root))
    assert _query_n(capsys, "query", sql, "--format", "csv") == expected
    assert _query_n(capsys, "query", str(root), sql, "--format", "csv") == expected  # both
    for argv in (["verify"], ["verify", "--store", str(root)], ["labelsets"]):
        assert main(argv) == 0
    monkeypatch.delenv("METER_BATCH_STORE")
    assert main(["verify"]) == 2
    assert one_error_line(capsys) == (
        "meter-batch: error: no store given: STORE, --store STORE, or METER_BATCH_STORE=STORE"
    )
    assert main(["verify", str(root), "--store", str(root.parent)]) == 2
    assert "two stores given" in one_error_line(capsys)


def test_search_text_and_store_in_every_form(store, capsys, monkeypatch):
    _, root, _ = store
    forms = [["search", str(root), "a meter"], ["search", "--store", str(root), "a meter"],
             ["search", "a meter"]]  # fmt: skip
    outputs = []
    for argv in forms:
        if argv == forms[-1]:
            monkeypatch.setenv("METER_BATCH_STORE", str(root))
        outputs.append(_query_n(capsys, *argv, "-k", "3", "--format", "csv"))
    assert outputs[0] == outputs[1] == outputs[2]
    code, text = outputs[0]
    assert code == 0 and text.splitlines()[0] == '"rank","image_id","score","path"'
    assert [line.split(",")[0] for line in text.splitlines()[1:]] == ["1", "2", "3"]


def test_query_reads_its_sql_from_stdin_with_a_dash(store, capsys, monkeypatch):
    import io

    _, root, _ = store
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT count(*) AS n\nFROM images\n"))
    assert _query_n(capsys, "query", str(root), "-", "--format", "json") == (0, '{"n": 14}')
    monkeypatch.setenv("METER_BATCH_STORE", str(root))
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 2 AS two"))
    assert _query_n(capsys, "query", "-", "--format", "json") == (0, '{"two": 2}')


def test_query_out_writes_what_its_extension_names_and_refuses_a_mismatch(store, capsys, tmp_path):
    _, root, _ = store
    sql = "SELECT image_id FROM images ORDER BY 1 LIMIT 2"
    assert main(["query", str(root), sql, "--out", str(tmp_path / "ids.json")]) == 0
    lines = (tmp_path / "ids.json").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"image_id": 0}, {"image_id": 1}]
    capsys.readouterr()
    assert (
        main(["query", str(root), sql, "--out", str(tmp_path / "x.csv"), "--format", "json"]) == 2
    )
    assert "is csv, but --format says json" in one_error_line(capsys)
    assert not (tmp_path / "x.csv").exists()


def _bash_completes(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words``, through the script's own function."""
    line = " ".join(words)
    shell = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
        f"_shtab_meter_batch meter-batch {words[-1]!r} {words[-2]!r}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
    return sorted(done.stdout.split())


def test_bash_completion_knows_every_command_and_option(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "meter-batch.bash"
    script.write_text(capsys.readouterr().out)
    commands = _bash_completes(script, "meter-batch", "")
    assert {"encode", "classify", "query", "search", "report", "completion"} <= set(commands)
    assert _bash_completes(script, "meter-batch", "re") == ["rebuild-index", "repair", "report"]
    assert _bash_completes(script, "meter-batch", "query", "--fo") == ["--format"]
    assert _bash_completes(script, "meter-batch", "query", "--format", "") == [
        "csv", "json", "parquet", "table"
    ]  # fmt: skip
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores.txt").write_text("")
    folders = _bash_completes(script, "meter-batch", "verify", f"{tmp_path}/sto")
    assert folders == [f"{tmp_path}/stores"]  # STORE completes to folders only


def test_zsh_completion_is_generated_from_the_same_parser(capsys):
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef meter-batch")
    assert "--make-current" in script and "--map-thumbnails" in script


def test_the_demos_hints_name_a_command_that_runs_without_an_activated_venv(monkeypatch):
    import shlex

    from meter_batch.cli import how_we_were_run

    bin_dir = Path(sys.executable).parent  # the venv's bin, where meter-batch is installed
    script = bin_dir / "meter-batch"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no venv activated
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    assert how_we_were_run() == shlex.quote(str(script))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # activated: the plain name
    assert how_we_were_run() == "meter-batch"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(Path("meter_batch") / "__main__.py")])  # python -m
    hint = how_we_were_run()
    assert hint == f"{shlex.quote(sys.executable)} -m meter_batch"
    done = subprocess.run([*shlex.split(hint), "--version"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, check=True)  # fmt: skip
    assert done.stdout.startswith("meter-batch ")
