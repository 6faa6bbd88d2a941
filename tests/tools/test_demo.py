"""The shipped demo model: the checkpoint is the one recorded, and it classifies meters."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest

from meter_batch.cli import main
from meter_batch.config import DemoSettings
from meter_batch.tools.demo import MODEL_DIR, MODEL_WEIGHTS, run_demo
from meter_batch.tools.demo_shifted import MODES, SHOTS, ShiftedResult, shifted_table
from tests.helpers import browser_missing, chromium, section_screenshots

# A little below what `meter-batch demo` measured on 600 held-out images (README: 99.5 %,
# 99.5 %, 99.2 %): the first 60 of them are a noisier sample, and a retrained checkpoint
# must not be worse than this. Goals of the issue: >= 95 % and >= 90 %.
MIN_ACCURACY = {"meter-type": 0.95, "meter-type-rephrased": 0.93, "housing-colour": 0.93}


def test_the_shipped_checkpoint_is_the_recorded_one() -> None:
    recorded = dict(
        line.split()[::-1] for line in (MODEL_DIR / "SHA256SUMS").read_text().splitlines()
    )
    for name, digest in recorded.items():
        assert hashlib.sha256((MODEL_DIR / name).read_bytes()).hexdigest() == digest, name
    assert MODEL_WEIGHTS.name in recorded
    assert MODEL_WEIGHTS.stat().st_size <= 20 * 1024 * 1024


@pytest.mark.slow
def test_the_demo_classifies_held_out_meters(tmp_path: Path) -> None:
    demo = run_demo(DemoSettings(dir=tmp_path, count=60, workers=0))
    results = {r.label_set: r for r in demo.confusions}
    assert set(results) == set(MIN_ACCURACY)
    for name, result in results.items():
        assert result.total == 60, name
        assert result.accuracy >= MIN_ACCURACY[name], (name, result.accuracy, result.table())
    assert demo.shifted is not None
    _check_shifted(demo.shifted)
    # it ends with a report of the standard store against the renders' truth
    assert demo.report == tmp_path / "report" / "index.html"
    html = demo.report.read_text(encoding="utf-8")
    assert html.count('class="section label-set"') == 3  # the three standard sets
    assert html.count('class="truth"') == 2  # the meter-type sets, against the renders' types
    assert any((tmp_path / "report" / "thumbs").iterdir())
    _screenshots(demo.report, tmp_path)


def _screenshots(index: Path, folder: Path) -> None:
    """The demo report in Chromium: every section drawn, thumbnails loaded (where a
    browser can run; the browser tests say loudly when it cannot)."""
    missing = browser_missing()
    if missing is not None:
        warnings.warn(f"demo report screenshots not taken: {missing}", stacklevel=2)
        return
    with chromium() as browser:
        shots = section_screenshots(browser, index, folder)
    assert len(shots) == 5  # overview, three label sets, the map


def _check_shifted(shifted: ShiftedResult) -> None:
    """Every set judged on the same 60 shifted test images, none of them an example;
    the calibrated zero-shot set less over-confident than the set itself."""
    sets = {s.label_set: s for s in shifted.report.sets}
    few_shot = {f"meter-type-{m}-{n}" for m in MODES for n in SHOTS}
    calibrated = {"meter-type-calibrated", "meter-type-adapter-10-calibrated"}
    assert set(sets) == {"meter-type", *few_shot, *calibrated}
    assert {s.evaluation.images for s in sets.values()} == {60}
    assert {s.examples_left_out for s in sets.values()} == {0}
    assert {sets[name].mode for name in few_shot} == set(MODES)
    assert sets["meter-type"].evaluation.ece > sets["meter-type-calibrated"].evaluation.ece
    table = shifted_table(shifted).splitlines()
    assert len(table) == 1 + len(sets) and table[0].split()[:2] == ["label", "set"]
    assert [line.split()[0] for line in table[1:]] == [s.label_set for s in shifted.report.sets]


@pytest.mark.slow
def test_the_demo_command_prints_each_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["-q", "demo", "--dir", str(tmp_path), "--count", "30", "--workers", "0"]
    assert main([*args, "--standard-only"]) == 0
    out = capsys.readouterr().out
    assert out.count("accuracy") == 3 and "right \\ predicted" in out
    assert "style the model never saw" not in out and not (tmp_path / "store-shifted").exists()
    report = tmp_path / "report" / "index.html"
    assert f"open:   {report.resolve().as_uri()}" in out and report.exists()


def test_the_demo_does_not_replace_a_store_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "precious").write_text("keep me")
    assert main(["-q", "demo", "--dir", str(tmp_path), "--count", "3"]) == 2
    assert "not made by the demo" in capsys.readouterr().err
    assert (tmp_path / "store" / "precious").read_text() == "keep me"
