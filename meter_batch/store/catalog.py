"""The DuckDB catalog analysts open: views from sql/views/*.sql over committed files.

`STORE/catalog.duckdb` is rebuilt after every commit into a temp file and renamed into
place, so a reader never sees a half-built catalog. View SQL lives in sql/; Python only
fills in file lists taken from the manifest and the embedding dimension. Label text
and other user data reach DuckDB only as data (Arrow tables) or bound parameters.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from meter_batch.errors import ConfigError, StoreError
from meter_batch.store.commit import Store, fsync_dir, open_store
from meter_batch.store.layout import CATALOG, LiveKind, catalog_empty_file, temp_name
from meter_batch.store.records import LabelSetEntry, RunRecord
from meter_batch.store.schema import (
    FAILURES_SCHEMA,
    LABEL_SETS_SCHEMA,
    RUNS_SCHEMA,
    TOMBSTONES_SCHEMA,
    embeddings_schema,
    predictions_schema,
)


def sql_root() -> Traversable:
    """sql/ as installed (meter_batch.sql), or beside the package in a source checkout."""
    try:
        return resources.files("meter_batch.sql")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "sql"


def named_queries() -> dict[str, str]:
    folder = sql_root().joinpath("queries")
    return {
        entry.name.removesuffix(".sql"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".sql")
    }


def refresh_catalog(store: Store) -> Path:
    """Rebuild STORE/catalog.duckdb from the current manifest; atomic for readers."""
    final = store.root / CATALOG
    temp = store.root / temp_name(CATALOG)
    temp.unlink(missing_ok=True)
    try:
        with duckdb.connect(str(temp)) as con:
            _create_tables(con, store)
            for statement in _view_statements(store):
                con.execute(statement)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, final)
        fsync_dir(store.root)
    except (OSError, duckdb.Error) as exc:
        temp.unlink(missing_ok=True)
        raise StoreError(f"rebuilding {final} failed: {exc}") from exc
    return final


def _view_statements(store: Store) -> list[str]:
    values = {
        "dim": str(store.identity.embed_dim),
        "embedding_files": _file_list(
            store, "embeddings", embeddings_schema(store.identity.embed_dim)
        ),
        "failure_files": _file_list(store, "failures", FAILURES_SCHEMA),
        "tombstone_files": _file_list(store, "tombstones", TOMBSTONES_SCHEMA),
        "prediction_files": _file_list(store, "predictions", predictions_schema(1)),
    }
    folder = sql_root().joinpath("views")
    statements = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            text = entry.read_text(encoding="utf-8")
            for key, value in values.items():
                text = text.replace("{{" + key + "}}", value)
            statements.append(text)
    return statements


def _file_list(store: Store, kind: LiveKind, schema: pa.Schema) -> str:
    paths = store.live_paths(kind)
    if not paths:
        empty = store.root / catalog_empty_file(kind)
        empty.parent.mkdir(exist_ok=True)
        # replaced whole, never rewritten in place: a query of the current catalog reads
        # this file while an encode's next commit rebuilds the catalog
        temp = empty.with_name(temp_name(empty.name))
        pq.write_table(schema.empty_table(), temp)
        os.replace(temp, empty)
        paths = [empty]
    quoted = ", ".join("'" + str(p.resolve()).replace("'", "''") + "'" for p in paths)
    return f"[{quoted}]"


def _create_tables(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    con.execute("CREATE TABLE catalog_info (manifest_seq BIGINT, catalog_version INTEGER)")
    con.execute(
        "INSERT INTO catalog_info VALUES ($seq, $version)",
        {"seq": store.manifest.seq, "version": CATALOG_VERSION},
    )
    _create_table(con, "runs", RUNS_SCHEMA, [_run_row(r) for r in store.manifest.runs])
    label_sets = [_label_set_row(e) for e in store.manifest.label_sets]
    _create_table(con, "label_sets", LABEL_SETS_SCHEMA, label_sets)


def _create_table(
    con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema, rows: list[dict[str, Any]]
) -> None:
    """A table of ``schema``'s columns, the rows inserted as bound parameters. (Handing
    DuckDB an Arrow table would do, but it imports pandas where that is installed: a
    third of a second of every catalog rebuild, `rebuild-index` included.)"""
    columns = ", ".join(f'"{f.name}" {_DUCKDB_TYPES[str(f.type)]}' for f in schema)
    con.execute(f"CREATE TABLE {name} ({columns})")
    if rows:
        marks = ", ".join("?" for _ in schema)
        values = [[row[f.name] for f in schema] for row in rows]
        con.executemany(f"INSERT INTO {name} VALUES ({marks})", values)


_DUCKDB_TYPES = {  # the Arrow types of RUNS_SCHEMA and LABEL_SETS_SCHEMA
    "string": "VARCHAR",
    "int64": "BIGINT",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp[s, tz=UTC]": "TIMESTAMPTZ",
    "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    "list<item: string>": "VARCHAR[]",
}


# Raised whenever the catalog's tables or views change: a catalog of another version
# counts as stale and the next encode or classify rebuilds it (verify reports it).
CATALOG_VERSION = 2


def _run_row(run: RunRecord) -> dict[str, Any]:
    row = {name: getattr(run, name) for name in RUNS_SCHEMA.names}
    row["finished_at"] = datetime.fromisoformat(run.finished_at)
    return row


def _label_set_row(entry: LabelSetEntry) -> dict[str, Any]:
    row = {name: getattr(entry, name) for name in LABEL_SETS_SCHEMA.names}
    row["created_at"] = datetime.fromisoformat(entry.created_at)
    row["classified_at"] = datetime.fromisoformat(entry.classified_at or entry.created_at)
    row["logit_scale_setting"] = json.dumps(entry.logit_scale_setting)
    return row


def catalog_is_current(store: Store) -> bool:
    """Does catalog.duckdb describe the newest manifest, in this version's tables? (A
    crash between the manifest commit and the catalog rebuild leaves it one commit behind;
    an older meter-batch built it without the newer columns.)"""
    catalog = store.root / CATALOG
    if not catalog.exists():
        return False
    try:
        with duckdb.connect(str(catalog), read_only=True) as con:
            info = con.sql("SELECT manifest_seq, catalog_version FROM catalog_info").fetchall()
    except duckdb.Error:  # no catalog_version column: built before versions were recorded
        return False
    return bool(info) and info[0] == (store.manifest.seq, CATALOG_VERSION)


def run_query(store_root: Path, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run ``sql`` against the catalog, read-only; ``params`` are bound, never spliced."""
    catalog = store_root / CATALOG
    if not catalog.exists():
        raise StoreError(f"{store_root} has no {CATALOG}: run encode into it first")
    try:
        con = duckdb.connect(str(catalog), read_only=True)
    except duckdb.Error as exc:
        raise StoreError(f"cannot open {catalog}: {str(exc).splitlines()[0]}") from exc
    with con:
        try:
            return con.sql(sql, params=params or None).to_arrow_table()
        except duckdb.Error as exc:
            hint = _stale_hint(store_root)
            raise ConfigError(f"query failed: {str(exc).splitlines()[0]}{hint}") from exc


def _stale_hint(store_root: Path) -> str:
    try:
        current = catalog_is_current(open_store(store_root))
    except StoreError:
        return ""
    return (
        ""
        if current
        else (
            " (the catalog is out of date, e.g. built by an older meter-batch: the next "
            "encode or classify run rebuilds it)"
        )
    )
