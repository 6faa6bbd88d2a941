"""`query` is read-only and confined to the store: one SELECT over the catalog, no file
written anywhere, no file outside the store read, no extension, the settings locked.
Every refusal is the one-line `query failed: ...` ConfigError (exit 2)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from meter_batch.cli import main
from meter_batch.errors import ConfigError
from meter_batch.store.catalog import _open_sandboxed, run_query
from meter_batch.store.commit import open_store
from tests.helpers import assert_consistent, one_error_line, snapshot


def _refused(store: Path, sql: str) -> str:
    """The error ``sql`` is refused with (the test fails if it runs)."""
    with pytest.raises(ConfigError, match=r"^query failed: ") as caught:
        run_query(store, sql)
    return str(caught.value)


def _outside(tmp_path: Path) -> Path:
    """A folder beside the store, with a CSV and a DuckDB database in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.csv").write_text("secret\nhunter2\n")
    with duckdb.connect(str(folder / "other.duckdb")) as con:
        con.execute("CREATE TABLE t AS SELECT 'hunter2' AS secret")
    return folder


def test_nothing_is_written_outside_the_store(encoded, tmp_path, capsys):
    _, _, store = encoded
    target = tmp_path / "written"
    for sql in [
        f"COPY (SELECT 1 AS a) TO '{target}.csv'",
        f"COPY images TO '{target}.parquet' (FORMAT parquet)",
        f"EXPORT DATABASE '{target}'",
        f"ATTACH '{target}.duckdb' AS new (READ_WRITE)",
        f"SELECT * FROM enable_logging(storage := 'file', storage_path := '{target}')",
        f"SELECT * FROM enable_profiling(save_location := '{target}.json')",
    ]:
        _refused(store, sql)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["images", "store"])
    assert main(["query", str(store), f"COPY (SELECT 1) TO '{target}.csv'"]) == 2
    assert "query failed: only a single SELECT may run, not COPY" in one_error_line(capsys)


def test_a_live_part_cannot_be_overwritten(encoded):
    _, _, store = encoded
    part = open_store(store).live_paths("embeddings")[0]
    before, files = part.read_bytes(), snapshot(store)
    for sql in [
        f"COPY (SELECT 1 AS image_id) TO '{part}' (FORMAT parquet)",
        f"COPY (SELECT 1 AS image_id) TO '{store}/embeddings/new.parquet' (FORMAT parquet)",
        f"EXPORT DATABASE '{store}/export'",
        f"ATTACH '{store}/new.duckdb' AS new (READ_WRITE)",
    ]:
        _refused(store, sql)
    assert part.read_bytes() == before and snapshot(store) == files
    assert_consistent(store)


def test_no_file_outside_the_store_is_read(encoded, tmp_path):
    _, _, store = encoded
    outside = _outside(tmp_path)
    sibling = Path(f"{store}2")  # the same name prefix, not inside the store
    sibling.mkdir()
    (sibling / "secret.csv").write_text("secret\nhunter2\n")
    for sql in [
        f"SELECT * FROM read_csv('{outside}/secret.csv')",
        f"SELECT * FROM '{outside}/secret.csv'",
        f"SELECT * FROM read_text('{outside}/secret.csv')",
        f"SELECT * FROM read_blob('{outside}/*')",
        f"SELECT * FROM read_duckdb('{outside}/other.duckdb')",
        f"SELECT * FROM glob('{outside}/*')",
        "SELECT * FROM glob('/root/*')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{store}/../outside/secret.csv')",
        f"SELECT * FROM read_csv('{sibling}/secret.csv')",
        f"ATTACH '{outside}/other.duckdb' AS other (READ_ONLY)",
        f"SET enable_external_access = true; SELECT * FROM read_csv('{outside}/secret.csv')",
    ]:
        assert "hunter2" not in _refused(store, sql), sql


def test_no_extension_is_installed_or_loaded(encoded):
    _, _, store = encoded
    for sql in ["INSTALL httpfs", "FORCE INSTALL httpfs", "LOAD httpfs", "LOAD json"]:
        assert "only a single SELECT may run, not LOAD" in _refused(store, sql), sql
    settings = run_query(
        store,
        "SELECT current_setting('autoinstall_known_extensions') AS install, "
        "current_setting('autoload_known_extensions') AS load",
    ).to_pylist()
    assert settings == [{"install": False, "load": False}]


def test_the_configuration_is_locked(encoded):
    _, _, store = encoded
    for sql in [
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "RESET allowed_directories",
        "SET lock_configuration = false",
        "PRAGMA threads = 1",
        "SELECT * FROM enable_logging()",
        "CALL enable_profiling()",
    ]:
        _refused(store, sql)
    settings = run_query(
        store,
        "SELECT current_setting('enable_external_access') AS external, "
        "current_setting('lock_configuration') AS locked",
    ).to_pylist()
    assert settings == [{"external": False, "locked": True}]


def test_the_sandbox_holds_without_the_statement_check(encoded, tmp_path):
    """The engine refuses on its own what a SELECT-only rule would also refuse."""
    _, _, store = encoded
    outside = _outside(tmp_path)
    with _open_sandboxed(store) as con:
        for sql in [
            "SET enable_external_access = true",
            "SET allowed_directories = ['/']",
            "SET lock_configuration = false",
            "LOAD httpfs",
            f"COPY (SELECT 1) TO '{outside}/x.csv'",
            f"SELECT * FROM read_csv('{outside}/secret.csv')",
        ]:
            with pytest.raises(duckdb.Error):
                con.execute(sql).fetchall()
    assert not (outside / "x.csv").exists()


def test_the_store_still_reads(encoded, tmp_path, monkeypatch):
    _, _, store = encoded
    assert run_query(store, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 14}]
    monkeypatch.chdir(tmp_path)  # the README's plain glob, relative and absolute
    for pattern in ["store/embeddings/*.parquet", f"{store}/embeddings/*.parquet"]:
        rows = run_query(store, f"SELECT count(*) AS n FROM '{pattern}'").to_pylist()
        assert rows == [{"n": 14}]
    tables = {r["name"] for r in run_query(store, "SHOW TABLES").to_pylist()}
    assert {"images", "failures", "tombstones", "runs", "label_sets"} <= tables
    described = run_query(store, "DESCRIBE images").to_pylist()
    assert {r["column_name"]: r["column_type"] for r in described}["embedding"] == "FLOAT[32]"
    rows = run_query(store, "SELECT $n::INTEGER + 1 AS m;", {"n": 1}).to_pylist()
    assert rows == [{"m": 2}]


def test_a_users_own_connection_is_left_alone(encoded, tmp_path):
    """DuckDB shares one database per file within a process: the sandbox must not."""
    _, _, store = encoded
    outside = _outside(tmp_path)
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as mine:
        assert run_query(store, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 14}]
        secret = mine.sql(f"SELECT * FROM read_csv('{outside}/secret.csv')").fetchall()
        assert secret == [("hunter2",)]
        mine.execute("SET threads = 1")
