"""One store for the report tests (built once): 14 images, a label set classified twice
(the second version current, so there is a change to show), one label id that is HTML,
a truth file, and its report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from meter_batch.config import ReportSettings
from meter_batch.labels.classify_run import classify
from meter_batch.report.report_run import ReportResult, report
from tests.helpers import encode_images, labels_toml, make_images

HOSTILE = "<script>alert(1)</script>"
LABELS = {"digital": "a digital meter", "rotary": "a rotary counter", HOSTILE: "a round dial"}
EDITED = {"digital": "seven segment digits", "rotary": "a rotary counter", HOSTILE: "a dial"}
SETTINGS = ReportSettings(gallery=3, review=5)


@dataclass(frozen=True)
class Reported:
    images: Path
    relpaths: list[str]
    store: Path
    labels: Path
    truth: Path
    out: Path
    result: ReportResult


@pytest.fixture(scope="session")
def reported(tmp_path_factory: pytest.TempPathFactory, configs: dict[str, Path]) -> Reported:
    folder = tmp_path_factory.mktemp("report")
    images = folder / "images"
    relpaths = make_images(images, 14)
    store = folder / "store"
    encode_images(images, store, str(configs["vit"]), workers=0)
    first = labels_toml(folder, "meters", file="v1", **LABELS)
    classify(store, first, interactive=False)
    edited = labels_toml(folder, "meters", file="v2", **EDITED)
    classify(store, edited, interactive=False, make_current=True)
    truth = folder / "truth.csv"
    ids = list(LABELS)
    rows = [f"{path},{ids[i % 3]}" for i, path in enumerate(sorted(relpaths))]
    truth.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = folder / "out"
    result = report(store, (), truth, out, SETTINGS)
    return Reported(images, relpaths, store, edited, truth, out, result)
