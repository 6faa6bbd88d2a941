"""The DuckDB catalog: the query command's formats and named queries, the views, a stale
catalog rebuilt, the catalog opened read-only by another process, and a rebuild on a full
disk (the previous catalog stays). What `query` may not do: test_query_sandbox.py."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from meter_batch.cli import main
from meter_batch.config import EncodeConfig
from meter_batch.errors import ConfigError, StoreError
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.classify_run import classify
from meter_batch.store.catalog import catalog_is_current, refresh_catalog, run_query
from meter_batch.store.commit import open_store
from tests.helpers import fill, labels_toml, one_error_line, small_filesystem


def test_query_formats_and_named_queries(store, tmp_path, capsys):
    _, root, _ = store
    classify(root, labels_toml(tmp_path), interactive=False)
    capsys.readouterr()
    assert main(["query", str(root), "SELECT count(*) AS n FROM images", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ['"n"', "14"]

    assert main(["query", str(root), "--named", "counts_per_label_per_day",
                 "--param", "label_set=meter-type", "--format", "json"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(r["images"] for r in rows) == 14
    assert main(["query", str(root), "--named", "least_confident",
                 "--param", "label_set=meter-type", "--param", "limit=1"]) == 0  # fmt: skip
    table_text = capsys.readouterr().out
    assert table_text.splitlines()[0].split() == ["label", "image_id", "path", "prob", "margin"]

    out = tmp_path / "result.parquet"
    assert main(["query", str(root), "SELECT image_id FROM images", "--out", str(out)]) == 0
    assert sorted(pq.read_table(out).column(0).to_pylist()) == list(range(14))


def test_label_changes_between_versions(store, tmp_path, capsys):
    _, root, _ = store
    first = classify(root, labels_toml(tmp_path, extra="logit_scale = 3"), interactive=False)
    swapped = {"digital": "回転式メーター", "rotary": "デジタルメーター(7セグ)",
               "analog": "アナログメーター丸型"}  # fmt: skip
    second = classify(
        root, labels_toml(tmp_path, extra="logit_scale = 3", **swapped), interactive=False
    )
    capsys.readouterr()
    versions = [f"old_version={first.version}", f"new_version={second.version}"]
    args = ["query", str(root), "--named", "label_changes", "--format", "json",
            "--param", versions[0], "--param", versions[1]]  # fmt: skip
    assert main(args) == 0
    changed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    old = run_query(root, "SELECT image_id, label FROM predictions WHERE label_set_version = $v",
                    {"v": first.version}).to_pylist()  # fmt: skip
    swap = {"digital": "rotary", "rotary": "digital", "analog": "analog"}
    expected = sorted(r["image_id"] for r in old if swap[r["label"]] != r["label"])
    assert sorted(r["image_id"] for r in changed) == expected and expected


def test_bad_query_is_one_line_exit_2(store, capsys):
    _, root, _ = store
    assert main(["query", str(root), "SELECT nope FROM images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query failed" in err[0]


def _make_catalog_old(root: Path) -> None:
    """As an older meter-batch left it: no version, no jpeg_decode / compile columns."""
    with duckdb.connect(str(root / "catalog.duckdb")) as con:
        seq = con.sql("SELECT manifest_seq FROM catalog_info").fetchall()[0][0]
        con.execute("DROP TABLE catalog_info")
        con.execute(
            "CREATE TABLE catalog_info AS SELECT $seq::BIGINT AS manifest_seq", {"seq": seq}
        )
        con.execute("ALTER TABLE runs DROP COLUMN jpeg_decode")


def test_a_catalog_from_an_older_version_is_rebuilt_by_the_next_encode(store):
    images, root, spec = store
    _make_catalog_old(root)
    assert not catalog_is_current(open_store(root))
    config = EncodeConfig(images_dir=images, store=root, model=spec, workers=0)
    summary = encode(config, interactive=False)
    assert summary.encoded == 0 and summary.commits == 0  # nothing new, yet ...
    assert catalog_is_current(open_store(root))  # ... the catalog is this version's again
    assert run_query(root, "SELECT jpeg_decode FROM runs").to_pylist() == [
        {"jpeg_decode": "workers"}
    ]


def test_a_query_rebuilds_an_older_catalog_first_unless_a_run_holds_the_store(store):
    from meter_batch.store.commit import locked

    _, root, _ = store
    _make_catalog_old(root)
    stale = r"jpeg_decode.*out of date.*rebuilds it"
    # a run in progress holds the store: the catalog is queried as it is, the error says why
    with locked(root), pytest.raises(ConfigError, match=stale):
        run_query(root, "SELECT jpeg_decode FROM runs")
    assert run_query(root, "SELECT jpeg_decode FROM runs").to_pylist() == [
        {"jpeg_decode": "workers"}
    ]
    assert catalog_is_current(open_store(root))


def test_views_count_what_was_stored(encoded, tmp_path):
    _, _, store = encoded
    classify(store, labels_toml(tmp_path), interactive=False)
    query = (
        "SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM failures), "
        "(SELECT count(*) FROM predictions), (SELECT count(*) FROM latest_predictions), "
        "(SELECT count(*) FROM label_sets), (SELECT count(*) FROM runs), "
        "(SELECT sum(encoded) FROM runs)"
    )
    assert list(run_query(store, query).to_pylist()[0].values()) == [14, 0, 14, 14, 1, 1, 14]
    by_label = run_query(
        store, "SELECT label, count(*) AS n FROM latest_predictions GROUP BY 1"
    ).to_pylist()
    assert sum(r["n"] for r in by_label) == 14


def test_catalog_opens_read_only_in_another_process(encoded, tmp_path):
    _, _, store = encoded
    classify(store, labels_toml(tmp_path), interactive=False)
    script = (
        "import duckdb, sys\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\n"
        "print(con.sql('SELECT count(*) FROM images').fetchall()[0][0],"
        " con.sql('SELECT count(*) FROM latest_predictions').fetchall()[0][0],"
        " con.sql('SELECT typeof(embedding) FROM images LIMIT 1').fetchall()[0][0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(store / "catalog.duckdb")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["14", "14", "FLOAT[32]"]


# --- a catalog rebuild on a full disk ----------------------------------------------------

DISK_FULL = (
    'FATAL Error: Failed to create checkpoint because of error: Could not write file "{}": '
    "No space left on device"
)


class _FullDiskConnection:
    """A catalog build as DuckDB does it on a full disk: CHECKPOINT raises DuckDB's error,
    and close() leaves the tables in the .wal (DuckDB swallows the failed checkpoint)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str) -> None:
        self._con, self._path = con, path
        con.execute("PRAGMA disable_checkpoint_on_shutdown")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def __enter__(self) -> _FullDiskConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._con.close()

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.strip().upper() == "CHECKPOINT":
            raise duckdb.FatalException(DISK_FULL.format(self._path))
        return self._con.execute(sql, *args)


def _fill_disk_while_rebuilding(monkeypatch: pytest.MonkeyPatch) -> None:
    real = duckdb.connect

    def connect(database: str = ":memory:", read_only: bool = False, **kw: Any) -> Any:
        con = real(database, read_only=read_only, **kw)
        is_temp = ".tmp-" in str(database) and not read_only
        return _FullDiskConnection(con, str(database)) if is_temp else con

    monkeypatch.setattr(duckdb, "connect", connect)


def _debris(root: Path) -> list[str]:
    left = [*root.rglob(".*.tmp-*"), *root.rglob("*.wal")]
    return sorted(str(p.relative_to(root)) for p in left)


def _assert_previous_catalog(root: Path, before: bytes) -> None:
    assert (root / "catalog.duckdb").read_bytes() == before
    assert run_query(root, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 14}]
    assert _debris(root) == []


def test_a_full_disk_at_the_checkpoint_keeps_the_previous_catalog(encoded, monkeypatch):
    _, _, root = encoded
    before = (root / "catalog.duckdb").read_bytes()
    _fill_disk_while_rebuilding(monkeypatch)
    with pytest.raises(StoreError) as caught:
        refresh_catalog(open_store(root))
    assert str(caught.value) == (
        f"writing to {root / 'catalog.duckdb'} failed: disk full; the last commit is intact"
    )
    _assert_previous_catalog(root, before)
    monkeypatch.undo()  # space again: the next rebuild installs a good catalog
    refresh_catalog(open_store(root))
    assert catalog_is_current(open_store(root)) and _debris(root) == []


def test_a_full_disk_writing_an_empty_stand_in_keeps_the_previous_catalog(encoded, monkeypatch):
    _, _, root = encoded
    before = (root / "catalog.duckdb").read_bytes()

    def write_table(table: Any, where: Any, **kw: Any) -> None:
        Path(where).write_bytes(b"PAR1 half written")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", write_table)
    with pytest.raises(StoreError, match=r"catalog-empty/.* failed: disk full; the last"):
        refresh_catalog(open_store(root))
    _assert_previous_catalog(root, before)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (root only): a disk that really fills up."""
    with small_filesystem(tmp_path / "disk", "16m") as folder:
        yield folder


def test_a_really_full_disk_keeps_the_previous_catalog(encoded, small_disk):
    _, _, encoded_root = encoded
    root = small_disk / "store"
    shutil.copytree(encoded_root, root)
    refresh_catalog(open_store(root))  # the views name this copy's files
    before = (root / "catalog.duckdb").read_bytes()
    fill(small_disk, leave=64 * 1024)
    with pytest.raises(StoreError, match="failed: disk full; the last commit is intact"):
        refresh_catalog(open_store(root))
    _assert_previous_catalog(root, before)
    (small_disk / "filler").unlink()
    refresh_catalog(open_store(root))
    assert catalog_is_current(open_store(root)) and _debris(root) == []


# --- a store moved or copied: the views name files by absolute path --------------------


def test_a_moved_store_is_followed_by_query_and_found_by_verify(store, tmp_path, capsys):
    _, root, _ = store
    moved = tmp_path / "elsewhere" / "store"
    moved.parent.mkdir()
    shutil.move(root, moved)
    capsys.readouterr()
    assert main(["verify", str(moved)]) == 8
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"problem: catalog.duckdb was built for the store at {root.resolve()} (this one was "
        f"moved or copied): `meter-batch repair {moved}` or the next query rebuilds it"
    ]
    assert main(["query", str(moved), "SELECT count(*) AS n FROM images", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ['"n"', "14"]
    assert f"the store was moved from {root.resolve()}" in err
    assert main(["verify", str(moved)]) == 0 and catalog_is_current(open_store(moved))


def test_a_copy_reads_its_own_files_not_the_originals(store, tmp_path):
    _, root, _ = store
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert not catalog_is_current(open_store(copy))  # encode or classify would rebuild it
    shutil.rmtree(root)  # a copy whose views still named the original's files reads none
    assert run_query(copy, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 14}]


def test_a_moved_store_that_cannot_be_written_says_what_to_run(
    store, tmp_path, capsys, monkeypatch
):
    import meter_batch.store.catalog as catalog

    _, root, _ = store
    moved = tmp_path / "moved"
    shutil.move(root, moved)

    def read_only(path: Path) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(path / ".lock"))

    monkeypatch.setattr(catalog, "locked", read_only)
    capsys.readouterr()
    assert main(["query", str(moved), "SELECT 1"]) == 5
    line = one_error_line(capsys)
    assert f"reads the files under {root.resolve()}, not this store's" in line
    assert f"(Permission denied: {moved / '.lock'}): run `meter-batch repair {moved}`" in line
