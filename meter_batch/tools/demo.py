"""`meter-batch demo`: the shipped meter model on synthetic meters it never saw.

Held-out renders (a seed never used in training) -> encode with the shipped checkpoint
-> classify with three label sets (the seed's Japanese labels, an English set phrased
unlike any training caption, and an attribute set: the housing colour) -> a confusion
table and the accuracy of each, from the stored embeddings alone. Then the same meters
drawn in a style the model never saw (demo_shifted.py): zero-shot against few-shot and
calibrated sets, through `evaluate`.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from meter_batch.config import DemoSettings, EncodeConfig, ModelSpec
from meter_batch.errors import ConfigError
from meter_batch.ingest.encode_run import RunSummary, encode
from meter_batch.labels.classify_run import classify
from meter_batch.output import display_width, ljust, rjust
from meter_batch.store.catalog import run_query
from meter_batch.tools.demo_shifted import FOLDER, STORE, ShiftedResult, run_shifted

log = logging.getLogger("meter_batch")

MODEL_DIR = Path(__file__).resolve().parents[1] / "demo_model"
MODEL_CONFIG = MODEL_DIR / "meter-clip-tiny.json"
MODEL_WEIGHTS = MODEL_DIR / "model.safetensors"
HELD_OUT_SEED = 1_000_003  # never used in training
UNKNOWN = "unknown"  # an abstained prediction
MARKER = ".meter-batch-demo"  # marks a folder whose heldout/ and store/ the demo owns


@dataclass(frozen=True)
class LabelSetCheck:
    """A label-set file and which truth column its label ids answer."""

    file: str
    truth_column: str
    label_for_truth: dict[str, str]  # truth value -> the label id that is right for it


METER_TYPE_IDS = {"digital": "digital_7seg", "rotary": "rotary", "analog": "analog_round"}
CHECKS = (
    LabelSetCheck("meter-type.toml", "meter_type", METER_TYPE_IDS),
    LabelSetCheck("meter-type-rephrased.toml", "meter_type", METER_TYPE_IDS),
    LabelSetCheck(
        "housing-colour.toml",
        "housing_colour",
        {c: c for c in ("white", "black", "grey", "blue")},
    ),
)


@dataclass(frozen=True)
class Confusion:
    """Counts of (right label, predicted label) pairs for one label set."""

    label_set: str
    counts: Counter[tuple[str, str]]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def accuracy(self) -> float:
        right = sum(n for (truth, predicted), n in self.counts.items() if truth == predicted)
        return right / self.total if self.total else 0.0

    def table(self) -> str:
        truths = sorted({t for t, _ in self.counts})
        predicted = truths + sorted({p for _, p in self.counts} - set(truths))
        width = max(display_width(x) for x in [*predicted, "right \\ predicted"]) + 2
        lines = [ljust("right \\ predicted", width) + "".join(rjust(p, width) for p in predicted)]
        for truth in truths:
            cells = "".join(rjust(str(self.counts.get((truth, p), 0)), width) for p in predicted)
            lines.append(ljust(truth, width) + cells)
        return "\n".join(lines)


def labelsets_folder() -> Path:
    """jobs/labelsets as installed (meter_batch.labelsets), or in a source checkout."""
    try:
        return Path(str(resources.files("meter_batch.labelsets")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "jobs" / "labelsets"


@dataclass(frozen=True)
class DemoResult:
    confusions: list[Confusion]  # the standard held-out set, one per label set in CHECKS
    shifted: ShiftedResult | None  # None: --standard-only
    report: Path  # the standard store's report: index.html


def run_demo(settings: DemoSettings) -> DemoResult:
    """Render, encode, classify with every label set in CHECKS, and score the answers;
    then the style-shifted half."""
    folder = settings.dir
    _claim(folder)
    for old in OUTPUTS:  # the demo's own outputs from an earlier run
        shutil.rmtree(folder / old, ignore_errors=True)
    confusions = _standard(settings)
    shifted = None
    if not settings.standard_only:
        log.info("the style-shifted half: zero-shot, few-shot and calibrated label sets")
        labels = labelsets_folder() / CHECKS[0].file
        shifted = run_shifted(folder, settings.count, settings.workers, demo_model(), labels)
    return DemoResult(confusions, shifted, _report(folder))


def _report(folder: Path) -> Path:
    """The standard store's report, against the renders' truth: every section filled."""
    from meter_batch.config import ReportSettings
    from meter_batch.report.report_run import report

    log.info("writing the report into %s", folder / REPORT)
    truth = folder / REPORT_TRUTH  # the renders' meter types, as the report reads truth
    with open(folder / "heldout" / "truth.csv", encoding="utf-8", newline="") as handle:
        rows = [(r["file"], METER_TYPE_IDS[r["meter_type"]]) for r in csv.DictReader(handle)]
    with open(truth, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return report(folder / "store", (), truth, folder / REPORT, ReportSettings()).index


def _standard(settings: DemoSettings) -> list[Confusion]:
    from meter_batch.tools.synthetic import write_synthetic_set

    folder, count, workers = settings.dir, settings.count, settings.workers
    log.info("rendering %d held-out meters (seed %d) into %s", count, HELD_OUT_SEED, folder)
    rendered = write_synthetic_set(folder / "heldout", count, HELD_OUT_SEED, 1, workers)
    store = folder / "store"
    summary = encode_demo(rendered.images_dir, store, workers)
    log.info("encoded %d images (%.0f img/s) into %s", summary.encoded, summary.images_per_s, store)
    truth = read_truth(rendered.truth_csv)
    results = []
    for check in CHECKS:
        labels = labelsets_folder() / check.file
        classify(store, labels, interactive=False)
        results.append(confusion(store, labels, check, truth))
    return results


REPORT = "report"
REPORT_TRUTH = "report-truth.csv"
OUTPUTS = ("heldout", "store", FOLDER, STORE, REPORT, REPORT_TRUTH)


def _claim(folder: Path) -> None:
    """The demo rewrites its OUTPUTS under DIR: only in a folder it made itself."""
    ours = folder / MARKER
    found = [n for n in OUTPUTS if (folder / n).exists()]
    if found and not ours.exists():
        raise ConfigError(
            f"{folder} already holds {' and '.join(found)}, not made by the demo, which "
            f"would replace them; give the demo another --dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    ours.touch()


def demo_model() -> ModelSpec:
    return ModelSpec(name=str(MODEL_CONFIG), pretrained=str(MODEL_WEIGHTS))


def encode_demo(images: Path, store: Path, workers: int) -> RunSummary:
    config = EncodeConfig(images_dir=images, store=store, model=demo_model(), workers=workers)
    return encode(config, interactive=False)


def read_truth(path: Path) -> dict[str, dict[str, str]]:
    """file name -> what the image shows (truth.csv of a synthetic set)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def confusion(
    store: Path, labels: Path, check: LabelSetCheck, truth: dict[str, dict[str, str]]
) -> Confusion:
    from meter_batch.labels.label_sets import load_label_set

    name = load_label_set(labels).name
    rows = run_query(
        store,
        "SELECT i.path, p.label, p.abstained FROM latest_predictions AS p "
        "JOIN images AS i USING (image_id) WHERE p.label_set = $name",
        {"name": name},
    ).to_pylist()
    counts: Counter[tuple[str, str]] = Counter()
    for row in rows:
        right = check.label_for_truth[truth[row["path"]][check.truth_column]]
        counts[right, UNKNOWN if row["abstained"] else row["label"]] += 1
    return Confusion(name, counts)
