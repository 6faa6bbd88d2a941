"""The DuckDB catalog: the query command's formats and named queries, the views, a stale
catalog rebuilt, and the catalog opened read-only by another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from meter_batch.cli import main
from meter_batch.config import EncodeConfig
from meter_batch.errors import ConfigError
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.classify_run import classify
from meter_batch.store.catalog import catalog_is_current, run_query
from meter_batch.store.commit import open_store
from tests.helpers import labels_toml


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
    import duckdb

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
    with pytest.raises(ConfigError, match=r"jpeg_decode.*out of date.*rebuilds it"):
        run_query(root, "SELECT jpeg_decode FROM runs")
    config = EncodeConfig(images_dir=images, store=root, model=spec, workers=0)
    summary = encode(config, interactive=False)
    assert summary.encoded == 0 and summary.commits == 0  # nothing new, yet ...
    assert catalog_is_current(open_store(root))  # ... the catalog is this version's again
    assert run_query(root, "SELECT jpeg_decode FROM runs").to_pylist() == [
        {"jpeg_decode": "workers"}
    ]


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
