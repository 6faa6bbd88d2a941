"""calibrate: the temperature and thresholds fitted as by hand, held-out figures only,
an over-confident set made honest, and the written file a new version (issue 16, item 2)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from meter_batch.cli import main
from meter_batch.labels.calibrate_run import calibrate
from meter_batch.labels.calibration import fit_scale, fit_thresholds, folds, softmax
from meter_batch.labels.label_sets import label_set_toml, load_label_set
from meter_batch.store.commit import open_store
from tests.helpers import PROMPTS, labels_toml, one_error_line


def test_the_fitted_scale_is_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(3)
    cosines = rng.uniform(-0.2, 0.4, size=(4000, 4))
    probs = softmax(cosines, 20.0)
    truth = np.array([rng.choice(4, p=row) for row in probs])
    assert fit_scale(cosines, truth) == pytest.approx(20.0, rel=0.1)


def test_thresholds_are_the_lowest_that_keep_the_precision():
    # label 0 answered at .9 right, .8 right, .7 wrong, .6 right; label 1 at .95 wrong
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.05, 0.95]])
    truth = np.array([0, 0, 1, 0, 0])
    # precision from the top for label 0: 1, 1, 2/3, 3/4
    assert fit_thresholds(probs, truth, 0.75) == (0.6, 1.0)  # label 1 never reaches it
    assert fit_thresholds(probs, truth, 0.8) == (0.8, 1.0)


def test_every_image_is_held_out_once_and_never_in_its_own_fit():
    seen = []
    for fit_rows, held in folds(23, 5):
        assert not set(fit_rows) & set(held) and len(fit_rows) + len(held) == 23
        seen += held.tolist()
    assert sorted(seen) == list(range(23))


def _truth(folder: Path, relpaths: list[str]) -> Path:
    path = folder / "truth.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((p, list(PROMPTS)[i % 3]) for i, p in enumerate(sorted(relpaths)))
    return path


def test_an_over_confident_set_is_made_honest_on_held_out_images(encoded, tmp_path):
    """A random tiny model at scale 100: near-certain answers, right a third of the time."""
    _, relpaths, store = encoded
    labels = labels_toml(tmp_path)
    out = tmp_path / "calibrated.toml"
    report = calibrate(store, labels, _truth(tmp_path, relpaths), out, k=3)
    assert report.images == 14 and report.before.ece > 0.3
    assert report.after.ece < report.before.ece / 2
    assert report.after.nll < report.before.nll
    written = load_label_set(out)
    assert written.logit_scale == pytest.approx(report.fitted.scale, rel=1e-5)
    assert isinstance(written.logit_scale, float) and written.logit_scale < 100
    identity = open_store(store).identity
    assert written.version(identity) != load_label_set(labels).version(identity)
    assert [label.prompts for label in written.labels] == [(p,) for p in PROMPTS.values()]


def test_target_precision_writes_per_label_thresholds_that_classify_applies(encoded, tmp_path):
    from meter_batch.labels.classify_run import classify
    from meter_batch.store.catalog import run_query

    _, relpaths, store = encoded
    out = tmp_path / "calibrated.toml"
    report = calibrate(store, labels_toml(tmp_path), _truth(tmp_path, relpaths), out, 0.9, 3)
    thresholds = [label.min_prob or 0.0 for label in load_label_set(out).labels]
    assert thresholds == pytest.approx(report.fitted.thresholds, abs=1e-6)
    classify(store, out, interactive=False)
    rows = run_query(store, "SELECT prob, top_labels[1] AS top, abstained FROM predictions")
    limits = dict(zip(PROMPTS, thresholds, strict=True))
    for row in rows.to_pylist():
        assert row["abstained"] == (row["prob"] < limits[row["top"]] - 1e-6), row


def test_a_label_set_file_reads_back_as_written(tmp_path):
    original = load_label_set(
        labels_toml(tmp_path, extra='templates = ["a photo of {}.", "{}"]\nlogit_scale = 37.5')
    )
    path = tmp_path / "again.toml"
    path.write_text(label_set_toml(original), encoding="utf-8")
    assert load_label_set(path) == original


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--target-precision", "1.5"], "--target-precision must be between 0 and 1"),
        (["--folds", "1"], "--folds must be at least 2"),
        (["--folds", "8"], "needs at least 16 truth images in the store for 8 folds; 14"),
    ],
)
def test_bad_calibrate_settings_are_one_line(encoded, tmp_path, extra, expected, capsys):
    _, relpaths, store = encoded
    labels = labels_toml(tmp_path)
    argv = ["calibrate", "--store", str(store), "--labels", str(labels), "--truth",
            str(_truth(tmp_path, relpaths)), "-o", str(tmp_path / "out.toml"), *extra]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "out.toml").exists()


def test_calibrate_will_not_overwrite_its_own_input(encoded, tmp_path, capsys):
    _, relpaths, store = encoded
    labels = labels_toml(tmp_path)
    before = labels.read_text()
    argv = ["calibrate", "--store", str(store), "--labels", str(labels), "--truth",
            str(_truth(tmp_path, relpaths)), "-o", str(labels)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    assert "is the label-set file itself" in one_error_line(capsys)
    assert labels.read_text() == before
