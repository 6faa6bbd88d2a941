"""One current version per label-set name: hand experiments never move latest_predictions,
the nightly job applies its version unless a person pinned another (issue 16, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

from meter_batch.cli import main
from meter_batch.labels.classify_run import classify
from meter_batch.labels.evaluate_run import evaluate
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from tests.helpers import labels_toml, one_error_line

LATEST = "SELECT image_id, label_set_version FROM latest_predictions ORDER BY image_id"


def _versions(store: Path) -> set[str]:
    return set(run_query(store, LATEST).column("label_set_version").to_pylist())


def _nightly_and_edit(tmp_path: Path) -> tuple[Path, Path]:
    nightly = labels_toml(tmp_path, file="nightly")
    edit = labels_toml(tmp_path, file="edit", extra='templates = ["a photo of {}."]')
    return nightly, edit


def test_a_hand_classify_never_flips_what_analysts_see(encoded, tmp_path):
    """The issue's report: a hand classify of v3 took over, the next nightly flipped all
    images back. Now the nightly's version stays current throughout."""
    _, _, store = encoded
    nightly, edit = _nightly_and_edit(tmp_path)
    v1 = classify(store, nightly, interactive=False, make_current=True).version
    shown = run_query(store, LATEST).to_pylist()
    assert len(shown) == 14 and _versions(store) == {v1}
    v3 = classify(store, edit, interactive=False).version  # a person trying a prompt
    assert v3 != v1 and run_query(store, LATEST).to_pylist() == shown
    classify(store, nightly, interactive=False, make_current=True)  # the next night
    assert run_query(store, LATEST).to_pylist() == shown


def test_a_pin_moves_it_and_the_job_does_not_move_it_back_until_unpinned(encoded, tmp_path, capsys):
    _, _, store = encoded
    nightly, edit = _nightly_and_edit(tmp_path)
    v1 = classify(store, nightly, interactive=False, make_current=True).version
    v3 = classify(store, edit, interactive=False).version
    capsys.readouterr()
    assert main(["labelsets", str(store), "--pin", v3]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "name": "meter-type",
        "current": v3,
        "how": "pinned",
    }
    assert _versions(store) == {v3}
    classify(store, nightly, interactive=False, make_current=True)
    assert _versions(store) == {v3}  # pinned: the job's run is remembered, not shown
    assert main(["labelsets", str(store), "--unpin", "meter-type"]) == 0
    assert json.loads(capsys.readouterr().out)["current"] == v1
    assert _versions(store) == {v1}


def test_the_first_version_of_a_name_is_current_and_evaluate_moves_nothing(encoded, tmp_path):
    _, relpaths, store = encoded
    nightly, edit = _nightly_and_edit(tmp_path)
    v1 = classify(store, nightly, interactive=False).version  # by hand, but the first
    assert _versions(store) == {v1}
    truth = tmp_path / "truth.csv"
    truth.write_text("path,label\n" + "".join(f"{p},digital\n" for p in relpaths))
    evaluate(store, [edit], truth)
    assert _versions(store) == {v1}


def test_labelsets_lists_versions_and_drops_one(encoded, tmp_path, capsys):
    _, _, store = encoded
    nightly, edit = _nightly_and_edit(tmp_path)
    v1 = classify(store, nightly, interactive=False, make_current=True).version
    v3 = classify(store, edit, interactive=False).version
    capsys.readouterr()
    assert main(["labelsets", str(store)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("meter-type")}
    assert set(lines) == {v1, v3} and " applied " in lines[v1] and " applied " not in lines[v3]
    entry = open_store(store).manifest.label_set(v3)
    assert entry is not None
    parts = entry.parts
    assert main(["labelsets", str(store), "--drop", v3]) == 0
    assert json.loads(capsys.readouterr().out) == {"dropped": [v3]}
    versions = "SELECT DISTINCT label_set_version FROM predictions"
    assert run_query(store, versions).column(0).to_pylist() == [v1]
    classify(store, nightly, interactive=False, make_current=True)  # the next writer
    assert not any((store / p).exists() for p in parts)  # removed as debris


def test_an_unknown_version_or_name_is_one_line(encoded, tmp_path, capsys):
    _, _, store = encoded
    classify(store, labels_toml(tmp_path), interactive=False)
    for argv, expected in (
        (["--pin", "nope"], "no label-set version 'nope'; versions: "),
        (["--unpin", "nope"], "no label-set name 'nope'; names: meter-type"),
        (["--drop", "nope"], "no label-set name or version 'nope'"),
    ):
        capsys.readouterr()
        assert main(["labelsets", str(store), *argv]) == 2
        assert expected in one_error_line(capsys)
