"""evaluate: figures from the stored vectors equal classify's answers, truth-file mistakes
are one line, the figures land in the catalog, and nothing a person sees moves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from meter_batch.cli import main
from meter_batch.labels.classify_run import classify
from meter_batch.labels.evaluate_run import evaluate
from meter_batch.store.catalog import run_query
from tests.helpers import PROMPTS, labels_toml, one_error_line

LABELS = list(PROMPTS)


def _truth(folder: Path, rows: list[tuple[object, str]], key: str = "path") -> Path:
    path = folder / "truth.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([key, "label", "who"])  # an extra column a team's sheet may have
        writer.writerows((k, label, "me") for k, label in rows)
    return path


def _assigned(relpaths: list[str]) -> list[tuple[object, str]]:
    return [(path, LABELS[i % 3]) for i, path in enumerate(sorted(relpaths))]


def test_accuracy_is_classifys_answers_against_the_truth(encoded, tmp_path):
    _, relpaths, store = encoded
    labels = labels_toml(tmp_path, extra="logit_scale = 3")
    classify(store, labels, interactive=False)
    truth = dict(_assigned(relpaths))
    rows = run_query(
        store, "SELECT i.path, p.label, p.prob FROM predictions p JOIN images i USING (image_id)"
    ).to_pylist()
    by_hand = sum(r["label"] == truth[r["path"]] for r in rows) / len(rows)

    report = evaluate(store, [labels], _truth(tmp_path, list(truth.items())))
    (result,) = report.sets
    assert result.stored_version and result.logit_scale == 3.0
    assert result.evaluation.images == 14 and report.missing == ()
    assert result.evaluation.accuracy.value == pytest.approx(by_hand)
    assert sum(c.support for c in result.evaluation.classes) == 14
    assert sum(map(sum, result.evaluation.confusion)) == 14
    recorded = run_query(store, "SELECT label_set, images, accuracy FROM evaluations").to_pylist()
    assert recorded == [{"label_set": "meter-type", "images": 14, "accuracy": by_hand}]


def test_rows_by_image_id_and_rows_not_in_the_store(encoded, tmp_path, capsys):
    _, _, store = encoded
    ids = run_query(store, "SELECT image_id FROM images ORDER BY image_id").column(0).to_pylist()
    rows = [(i, LABELS[i % 3]) for i in ids] + [(10_000, "digital")]
    truth = _truth(tmp_path, rows, key="image_id")
    labels = labels_toml(tmp_path)
    argv = ["evaluate", "--store", str(store), "--labels", str(labels), "--truth", str(truth)]
    capsys.readouterr()
    assert main([*argv, "--verbose", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "15 rows, 14 live images of the store, 1 not in it" in out
    assert out.rstrip().endswith("not in the store:\n  10000")
    written = json.loads((tmp_path / "e.json").read_text())
    assert written["missing"] == [10000] and written["sets"][0]["evaluation"]["images"] == 14


def test_two_label_sets_side_by_side_and_a_new_version_moves_no_prediction(encoded, tmp_path):
    _, relpaths, store = encoded
    seed = labels_toml(tmp_path)
    classify(store, seed, interactive=False)
    latest = "SELECT image_id, label, label_set_version FROM latest_predictions ORDER BY 1"
    before = run_query(store, latest).to_pylist()
    edited = labels_toml(tmp_path, file="edited", digital="a digital meter",
                         rotary="a rotary meter", analog="a round meter")  # fmt: skip
    report = evaluate(store, [seed, edited], _truth(tmp_path, _assigned(relpaths)))
    assert [s.stored_version for s in report.sets] == [True, False]  # the edit: encoded now
    assert report.sets[0].version != report.sets[1].version
    assert run_query(store, latest).to_pylist() == before
    assert run_query(store, "SELECT count(*) FROM label_sets").column(0).to_pylist() == [1]
    assert run_query(store, "SELECT count(*) FROM evaluations").column(0).to_pylist() == [2]


@pytest.mark.parametrize(
    ("content", "code", "expected"),
    [
        ("path,label\nsub0/img-000.jpg,gauge\n", 2, "labels that label set"),
        ("file,label\nx.jpg,digital\n", 2, "needs a header with `label` and one of"),
        ("path,label\nx.jpg,\n", 2, "line 2: the label is empty"),
        ("image_id,label\nseven,digital\n", 2, "image_id 'seven' is not a whole number"),
        ("path,label\na.jpg,digital\na.jpg,rotary\n", 2, "is labelled both 'digital' and"),
        ("path,label\nnowhere.jpg,digital\n", 3, "none of the 1 rows"),
        (None, 3, "truth file not found"),
    ],
)
def test_bad_truth_files_are_one_line(encoded, tmp_path, content, code, expected, capsys):
    _, _, store = encoded
    truth = tmp_path / "truth.csv"
    if content is not None:
        truth.write_text(content, encoding="utf-8")
    labels = labels_toml(tmp_path)
    capsys.readouterr()
    argv = ["evaluate", "--store", str(store), "--labels", str(labels), "--truth", str(truth)]
    assert main(argv) == code
    line = one_error_line(capsys)
    assert expected in line
    if "labels that label set" in line:
        assert "'gauge'" in line and "its ids: digital, rotary, analog" in line
