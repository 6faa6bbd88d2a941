"""The DuckDB catalog analysts open: views from sql/views/*.sql over committed files.

`STORE/catalog.duckdb` is rebuilt after every commit into a temp file and renamed into
place, so a reader never sees a half-built catalog. View SQL lives in sql/; Python only
fills in file lists taken from the manifest and the embedding dimension. Label text
and other user data reach DuckDB only as data (Arrow tables) or bound parameters.
`query` runs one SELECT in a sandbox: read-only, confined to the store, settings locked.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from dataclasses import asdict
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from meter_batch import faults
from meter_batch.errors import ConfigError, StoreError
from meter_batch.store.commit import (
    Store,
    fsync_dir,
    locked,
    open_existing,
    open_store,
    write_error,
)
from meter_batch.store.integrity import damaged
from meter_batch.store.layout import CATALOG, LiveKind, catalog_empty_file, temp_name
from meter_batch.store.records import EvaluationRecord, LabelSetEntry, Manifest, RunRecord
from meter_batch.store.schema import (
    CURRENT_SCHEMA,
    EVALUATIONS_SCHEMA,
    FAILURES_SCHEMA,
    LABEL_SETS_SCHEMA,
    RUNS_SCHEMA,
    TOMBSTONES_SCHEMA,
    embeddings_schema,
    predictions_schema,
)

log = logging.getLogger("meter_batch")


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
    """Rebuild STORE/catalog.duckdb from the current manifest; atomic for readers.

    On any failure the previous catalog stays in place and the temp file (and its .wal)
    is removed: a full disk raises the same one-line StoreError as a failed commit."""
    final = store.root / CATALOG
    temp = store.root / temp_name(CATALOG)
    _remove_temp(temp)  # a .wal left beside a reused temp name would be replayed into it
    try:
        _build_catalog(temp, store)
        os.replace(temp, final)
        fsync_dir(store.root)
    except (OSError, duckdb.Error) as exc:
        raise _rebuild_error(final, exc) from exc
    finally:
        _remove_temp(temp)
    return final


def _build_catalog(temp: Path, store: Store) -> None:
    """The catalog written whole into ``temp``, fsynced, nothing left in a .wal."""
    with duckdb.connect(
        str(temp), config={"storage_compatibility_version": _STORAGE_FORMAT}
    ) as con:
        _create_tables(con, store)
        for statement in _view_statements(store):
            con.execute(statement)
        _checkpoint(con)
    if _wal(temp).exists():  # what it holds would be lost by the rename
        raise StoreError(f"rebuilding the catalog in {temp} failed: DuckDB left its .wal")
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    faults.point("catalog")


def _checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Write the tables into the database file now. close() would checkpoint too, but it
    swallows a failure (disk full) and leaves the data in the .wal, which the rename to
    catalog.duckdb then leaves behind: an empty catalog. CHECKPOINT raises instead."""
    con.execute("CHECKPOINT")


def _wal(database: Path) -> Path:
    return database.with_name(database.name + ".wal")


def _remove_temp(temp: Path) -> None:
    temp.unlink(missing_ok=True)
    _wal(temp).unlink(missing_ok=True)


# What DuckDB's messages say (strerror) when the disk is full or failing, as errnos
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def _rebuild_error(final: Path, exc: OSError | duckdb.Error) -> StoreError:
    """One line; a full disk worded as commit.write_error words it, whichever library
    reported it (DuckDB names the errno only inside its message)."""
    if isinstance(exc, OSError):
        return write_error(final, exc)
    text = str(exc)
    for code in _DISK_ERRNOS:
        if os.strerror(code) in text:
            return write_error(final, OSError(code, os.strerror(code)))
    return StoreError(f"rebuilding {final} failed: {text.splitlines()[0]}")


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
        _write_empty(empty, schema)
        paths = [empty]
    quoted = ", ".join(_quote(p.resolve()) for p in paths)
    return f"[{quoted}]"


def _write_empty(empty: Path, schema: pa.Schema) -> None:
    temp = empty.with_name(temp_name(empty.name))
    try:
        pq.write_table(schema.empty_table(), temp)
        os.replace(temp, empty)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise write_error(empty, exc) from exc


def _quote(path: Path) -> str:
    """``path`` as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _create_tables(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    con.execute(
        "CREATE TABLE catalog_info (manifest_seq BIGINT, catalog_version INTEGER, "
        "store_root VARCHAR)"
    )
    con.execute(
        "INSERT INTO catalog_info VALUES ($seq, $version, $root)",
        {"seq": store.manifest.seq, "version": CATALOG_VERSION, "root": _built_for(store.root)},
    )
    _create_table(con, "runs", RUNS_SCHEMA, [_run_row(r) for r in store.manifest.runs])
    label_sets = [_label_set_row(e) for e in store.manifest.label_sets]
    _create_table(con, "label_sets", LABEL_SETS_SCHEMA, label_sets)
    evaluations = [_evaluation_row(e) for e in store.manifest.evaluations]
    _create_table(con, "evaluations", EVALUATIONS_SCHEMA, evaluations)
    current = [_current_row(store.manifest, name) for name in store.manifest.names()]
    _create_table(con, "current_label_sets", CURRENT_SCHEMA, current)


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
    "list<item: double>": "DOUBLE[]",
}


# Raised whenever the catalog's tables or views change: a catalog of another version
# counts as stale and the next encode or classify rebuilds it (verify reports it).
CATALOG_VERSION = 6  # 3: evaluations; 4: current_label_sets; 5: few-shot; 6: file format
# and the store's root (the views name files by absolute path: a moved or copied store's
# catalog would read the old place's files, or none)

# The oldest DuckDB that reads every view of the catalog: 1.3 is the first to read
# Parquet's FLOAT16 (the embeddings; older ones see a BLOB). scripts/test.sh installs it
# beside the project and tests/store/test_catalog_clients.py opens a catalog with it.
OLDEST_DUCKDB = "1.3.0"
# The file is written in DuckDB 1.0's storage format (file version 64), not the running
# DuckDB's own: 2.0.1's own file (version 999) is refused by every 1.x client ("we can
# only read versions between 64 and 68"). 1.0-1.2 open it too, all but the embeddings.
_STORAGE_FORMAT = "v1.0.0"


def _run_row(run: RunRecord) -> dict[str, Any]:
    row = {name: getattr(run, name) for name in RUNS_SCHEMA.names}
    row["finished_at"] = datetime.fromisoformat(run.finished_at)
    return row


def _current_row(manifest: Manifest, name: str) -> dict[str, Any]:
    current = manifest.current_of(name)
    assert current is not None  # every name listed has a version
    row = {field: getattr(current, field) for field in CURRENT_SCHEMA.names}
    row["since"] = datetime.fromisoformat(current.since)
    return row


def _evaluation_row(record: EvaluationRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in EVALUATIONS_SCHEMA.names}
    row["evaluated_at"] = datetime.fromisoformat(record.evaluated_at)
    return row


def _label_set_row(entry: LabelSetEntry) -> dict[str, Any]:
    row = {name: getattr(entry, name) for name in LABEL_SETS_SCHEMA.names}
    row["created_at"] = datetime.fromisoformat(entry.created_at)
    row["classified_at"] = datetime.fromisoformat(entry.classified_at or entry.created_at)
    row["logit_scale_setting"] = json.dumps(entry.logit_scale_setting)
    few_shot = entry.few_shot
    row["few_shot"] = None if few_shot is None else json.dumps(asdict(few_shot))
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
            info = con.sql(
                "SELECT manifest_seq, catalog_version, store_root FROM catalog_info"
            ).fetchall()
    except duckdb.Error:  # columns missing: built by an older meter-batch
        return False
    return bool(info) and info[0] == (
        store.manifest.seq, CATALOG_VERSION, _built_for(store.root)
    )  # fmt: skip


def _built_for(root: Path) -> str:
    return str(root.resolve())  # as _file_list names the files


def _built_by(store_root: Path) -> tuple[int | None, str | None]:
    """(catalog_version, store_root) a catalog records; None for what it does not say
    (an older meter-batch's) or cannot be read."""
    try:
        with duckdb.connect(str(store_root / CATALOG), read_only=True) as con:
            columns = {row[0] for row in con.sql("DESCRIBE catalog_info").fetchall()}
            wanted = [c if c in columns else "NULL" for c in ("catalog_version", "store_root")]
            info = con.sql(f"SELECT {', '.join(wanted)} FROM catalog_info").fetchall()
    except duckdb.Error:
        return None, None
    return (info[0][0], info[0][1]) if info else (None, None)


def catalog_moved_from(store_root: Path) -> str | None:
    """The root a catalog was built for, when that is not where the store is now (it was
    moved or copied); None when it is, or the catalog does not say (an older one)."""
    built_for = _built_by(store_root)[1]
    return built_for if built_for not in (None, _built_for(store_root)) else None


def _catch_up(store_root: Path) -> None:
    """Before a query: a catalog of a moved store is rebuilt (or the query refused: its
    views would read another place's files); one an older meter-batch built is rebuilt if
    the store can be written now, else queried as it is."""
    version, built_for = _built_by(store_root)
    if built_for not in (None, _built_for(store_root)):
        assert built_for is not None
        follow_move(store_root, built_for)
    elif version != CATALOG_VERSION:
        try:
            with locked(store_root) as lock:
                refresh_catalog(open_existing(store_root, lock))
            log.info("%s was built by an older meter-batch: rebuilt", store_root / CATALOG)
        except (OSError, StoreError) as exc:  # read-only, or a run holds it: query as it is
            log.debug("not rebuilding the older catalog of %s: %s", store_root, exc)


def follow_move(store_root: Path, built_for: str) -> None:
    """Rebuild the catalog of a store found moved from ``built_for``: it is derived from
    the manifest, as encode rebuilds a stale one. Someone who may not write the store
    (or while a run holds it) gets one line naming what to run instead."""
    try:
        with locked(store_root) as lock:
            refresh_catalog(open_existing(store_root, lock))
    except (OSError, StoreError) as exc:
        reason = str(exc) if isinstance(exc, StoreError) else f"{exc.strerror}: {exc.filename}"
        raise StoreError(
            f"{store_root / CATALOG} reads the files under {built_for}, not this store's (it "
            f"was moved or copied) and could not be rebuilt here ({reason}): run "
            f"`meter-batch repair {store_root}` as a user who may write to it"
        ) from exc
    log.info("the store was moved from %s: its catalog is rebuilt for %s", built_for, store_root)


def run_query(store_root: Path, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run one SELECT against the catalog in a sandbox: nothing written, no file outside
    the store read, no extension loaded, settings locked. ``params`` are bound, never
    spliced."""
    catalog = store_root / CATALOG
    if not catalog.exists():
        raise StoreError(f"{store_root} has no {CATALOG}: run encode into it first")
    _catch_up(store_root)
    try:
        with _open_sandboxed(store_root) as con:
            return con.sql(_one_select(con, sql), params=params or None).to_arrow_table()
    except duckdb.Error as exc:  # the connection is closed here: the hint opens its own
        text = str(exc).splitlines()[0]
        damage = _damaged_file_named(store_root, text)
        if damage is not None:
            raise damage from exc
        raise ConfigError(f"query failed: {text}{_stale_hint(store_root)}") from exc


def _damaged_file_named(store_root: Path, text: str) -> StoreError | None:
    """A query that failed on a file the manifest lists (truncated, overwritten): the
    store is damaged (exit 5), not the query wrong (exit 2)."""
    try:
        store = open_store(store_root)
    except StoreError as exc:
        return exc
    live = store.manifest.live_files()
    for quoted in re.findall(r"'([^']+)'", text):
        for root in {store_root.absolute(), store_root.resolve()}:
            path = Path(quoted)
            if path.is_relative_to(root) and path.relative_to(root).as_posix() in live:
                return damaged(store_root, path.relative_to(root).as_posix(), "does not read")
    return None


# Set when the database starts: DuckDB takes allowed_directories only afterwards (SET).
# No extension is installed or loaded behind a query's back (the sandbox refuses LOAD
# itself too); a big query spills beside the catalog, as it did when opened directly.
_SANDBOX_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}


def _open_sandboxed(store_root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory database of its own with the catalog attached read-only: SETs on a
    connection opened on catalog.duckdb itself would reach every connection this process
    has on that file (DuckDB shares one database per path), and could not differ."""
    catalog = store_root / CATALOG
    spill = f"{catalog.absolute()}.tmp"
    config: dict[str, Any] = {**_SANDBOX_CONFIG, "temp_directory": spill}
    con = duckdb.connect(":memory:", config=config)
    try:
        con.execute(f"ATTACH {_quote(catalog.absolute())} AS catalog (READ_ONLY)")
        con.execute("USE catalog")
        # reads inside the store only (the views name its files by absolute path; a
        # path given through a symlinked store name is allowed as well)
        con.execute("SET allowed_directories = $dirs", {"dirs": _store_dirs(store_root)})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")  # no SET can undo the above
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot open {catalog}: {str(exc).splitlines()[0]}") from exc
    return con


def _store_dirs(store_root: Path) -> list[str]:
    # a trailing separator: DuckDB matches prefixes, and STORE2/ must not pass for STORE
    roots = {store_root.absolute(), store_root.resolve()}
    return sorted(os.path.join(root, "") for root in roots)


def _one_select(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """``sql`` if it is exactly one SELECT (SHOW, DESCRIBE and SUMMARIZE are SELECTs).
    The sandbox lets DuckDB read and write inside the store, which the views need for
    reading; refusing every other statement (COPY, EXPORT, ATTACH, LOAD, SET, CALL,
    PRAGMA, EXPLAIN ANALYZE of a COPY ...) is what keeps the store's files unwritten."""
    statements = con.extract_statements(sql)
    kinds = [statement.type for statement in statements]
    if kinds != [duckdb.StatementType.SELECT]:
        found = ", ".join(kind.name for kind in kinds) or "no statement"
        raise ConfigError(f"query failed: only a single SELECT may run, not {found}")
    return str(statements[0].query)


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
