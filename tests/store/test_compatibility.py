"""A store written by an earlier meter-batch (717bb43, before the restructure) opens,
verifies, is queried and classified, and its manifests read back to the same JSON.

tests/data/store-717bb43/ was written by 717bb43 with the shipped demo model: six
sample images (two broken files among eight), then one deleted, one touched, one
replaced by another's bytes, then classified with jobs/labelsets/meter-type.toml. Its
catalog.duckdb was left out (derived data, rebuilt here); store.json names the model
files by the paths they had on the machine that wrote it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from meter_batch.cli import main
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from meter_batch.store.records import FailureKind, Manifest
from meter_batch.store.verify import Report, verify
from tests.helpers import OLD_STORE, REPO

LABELS = REPO / "jobs" / "labelsets" / "meter-type.toml"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(OLD_STORE, store)
    return store


@pytest.mark.parametrize("manifest", sorted((OLD_STORE / "manifests").glob("*.json")))
def test_its_manifests_read_back_to_the_json_they_were(manifest: Path) -> None:
    written = json.loads(manifest.read_text(encoding="utf-8"))
    assert json.loads(json.dumps(Manifest.from_json(written).to_json())) == written


def test_it_verifies_once_its_catalog_is_rebuilt(old_store: Path, capsys) -> None:
    report = verify(old_store)
    assert report.problems == ["catalog.duckdb is missing"]
    assert report.counts == {"rows": 8, "live": 5, "tombstoned": 3}
    assert main(["rebuild-index", str(old_store)]) == 0
    assert verify(old_store) == Report([], {"rows": 8, "live": 5, "tombstoned": 3})
    capsys.readouterr()


def test_its_rows_runs_failures_and_predictions_are_queried(old_store: Path, capsys) -> None:
    assert main(["rebuild-index", str(old_store)]) == 0
    runs = run_query(old_store, "SELECT scanned, encoded, touched, superseded, deleted, "
                     "jpeg_decode, compile FROM runs ORDER BY finished_at").to_pylist()  # fmt: skip
    assert [tuple(r.values()) for r in runs] == [
        (8, 6, 0, 0, 0, "workers", False),
        (7, 1, 1, 1, 1, "workers", False),
    ]
    failures = run_query(old_store, "SELECT path, kind, message FROM failures ORDER BY path")
    kinds = {r["path"]: r["kind"] for r in failures.to_pylist()}
    assert kinds == {"not-an-image.jpg": "unidentified", "truncated.jpg": "truncated"}
    for row in failures.to_pylist():  # read back as the kinds that are not retried
        kind = FailureKind.of_stored(row["kind"], row["message"])
        assert kind is not None and not kind.retried
    predicted = run_query(old_store, "SELECT count(*) AS n FROM latest_predictions")
    assert predicted.to_pylist() == [{"n": 5}]


def test_the_same_label_set_is_the_same_version_and_scores_nothing_new(
    old_store: Path, capsys
) -> None:
    before = open_store(old_store).manifest.label_sets
    assert main(["classify", "--store", str(old_store), "--labels", str(LABELS)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["version"], summary["scored"]) == (before[0].version, 0)
    assert [e.version for e in open_store(old_store).manifest.label_sets] == [before[0].version]
