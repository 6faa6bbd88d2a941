"""Older DuckDB clients open the catalog: its file is written in DuckDB 1.0's storage
format, and the oldest supported client (OLDEST_DUCKDB, installed by scripts/test.sh into
its own venv) reads every view with the same answers as ours."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from meter_batch.labels.classify_run import classify
from meter_batch.store.catalog import OLDEST_DUCKDB, run_query
from tests.helpers import labels_toml

OLDEST_PYTHON = os.environ.get("METER_BATCH_OLDEST_DUCKDB")

# What an analyst's notebook would ask, one scalar per view: counts and values that
# cross every column type the views have (FLOAT[D], TIMESTAMPTZ, lists, dictionaries).
QUESTIONS = {
    "images": "SELECT count(*), round(sum(embedding[1]), 4), epoch_us(max(mtime)) FROM images",
    "cosine": "SELECT round(max(array_cosine_similarity(a.embedding, b.embedding)), 4) "
    "FROM images a, images b WHERE a.image_id < b.image_id",
    "latest": "SELECT label, count(*) FROM latest_predictions GROUP BY 1 ORDER BY 1",
    "predictions": "SELECT count(*), round(sum(prob), 4) FROM predictions",
    "runs": "SELECT count(*), epoch_us(max(finished_at)) FROM runs",
    "label_sets": "SELECT name, len(labels), epoch_us(created_at) FROM label_sets",
    "current": "SELECT name, how FROM current_label_sets",
    "empty views": "SELECT (SELECT count(*) FROM failures) + (SELECT count(*) FROM tombstones)",
}

_CLIENT = """
import duckdb, json, sys
con = duckdb.connect(sys.argv[1], read_only=True)
questions = json.loads(sys.argv[2])
answers = {k: [list(r) for r in con.execute(q).fetchall()] for k, q in questions.items()}
views = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
for view in views:  # SELECT * as a notebook would, every column fetched into Python
    con.execute(f'SELECT * FROM "{view}"').fetchall()
print(json.dumps({"version": duckdb.__version__, "answers": answers, "views": sorted(views)}))
"""


def _file_format(catalog: Path) -> int:
    """The storage version in a DuckDB file's header (after the checksum and b"DUCK")."""
    header = catalog.read_bytes()[:20]
    assert header[8:12] == b"DUCK"
    return int(struct.unpack_from("<Q", header, 12)[0])


def test_the_catalog_is_written_in_duckdb_1_0s_file_format(store, tmp_path):
    _, root, _ = store
    classify(root, labels_toml(tmp_path), interactive=False)
    assert _file_format(root / "catalog.duckdb") == 64  # 2.0.1 writes 999 by default


@pytest.mark.skipif(
    not OLDEST_PYTHON,
    reason=f"METER_BATCH_OLDEST_DUCKDB unset: scripts/test.sh installs DuckDB {OLDEST_DUCKDB} "
    "into .venv/oldest-duckdb and sets it",
)
def test_the_oldest_supported_duckdb_reads_every_view_as_we_do(store, tmp_path):
    _, root, _ = store
    classify(root, labels_toml(tmp_path), interactive=False)
    assert OLDEST_PYTHON is not None
    client = subprocess.run(
        [OLDEST_PYTHON, "-c", _CLIENT, str(root / "catalog.duckdb"), json.dumps(QUESTIONS)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    theirs = json.loads(client.stdout)
    assert theirs["version"] == OLDEST_DUCKDB
    ours = {k: [list(row.values()) for row in run_query(root, q).to_pylist()]
            for k, q in QUESTIONS.items()}  # fmt: skip
    assert theirs["answers"] == ours
    assert theirs["answers"]["images"][0][0] == 14
    assert len(theirs["views"]) == 10
