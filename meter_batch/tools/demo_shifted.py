"""The demo's harder half: meters drawn in a style the shipped model never saw.

Style-shifted renders of three disjoint seeds -> a test set and a calibration set
encoded into DIR/store-shifted (prefixes test/ and calibration/), and 10 labelled
examples per type left outside the store -> the seed's label set zero-shot; few-shot
sets (prototype / adapter / probe, 1 / 5 / 10 examples per type, the examples encoded
once); the zero-shot and the 10-shot adapter sets calibrated on the calibration set ->
every set `evaluate`d side by side on the test set, which none of them saw.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.calibrate_run import CalibrationReport, calibrate
from meter_batch.labels.evaluate_run import EvaluateReport, SetEvaluation, evaluate
from meter_batch.labels.label_sets import label_set_toml, load_label_set
from meter_batch.output import display_width, ljust
from meter_batch.tools.synthetic import write_synthetic_set

log = logging.getLogger("meter_batch")

TEST_SEED = 1_000_003  # the held-out seed of the standard demo, drawn shifted
CALIBRATION_SEED = 1_000_033
EXAMPLES_SEED = 1_000_063
SHOTS = (1, 5, 10)  # labelled examples per meter type
MODES = ("prototype", "adapter", "probe")
TYPE_IDS = {"digital": "digital_7seg", "rotary": "rotary", "analog": "analog_round"}
FOLDER, STORE = "shifted", "store-shifted"  # under the demo's folder


@dataclass(frozen=True)
class ShiftedResult:
    images: int  # test images
    report: EvaluateReport
    calibrations: tuple[CalibrationReport, ...]
    shots: dict[str, int]  # label-set name -> examples per type (0: zero-shot)


def run_shifted(
    folder: Path, count: int, workers: int, model: ModelSpec, labels: Path
) -> ShiftedResult:
    """Render, encode, build the few-shot and calibrated sets, evaluate them all."""
    root, store = folder / FOLDER, folder / STORE
    sets = {
        name: write_synthetic_set(root / name, n, seed, 1, workers, style="shifted")
        for name, n, seed in (
            ("test", count, TEST_SEED),
            ("calibration", max(30, count // 2), CALIBRATION_SEED),
            ("examples", 3 * max(SHOTS), EXAMPLES_SEED),
        )
    }
    for name in ("test", "calibration"):
        config = EncodeConfig(
            images_dir=sets[name].images_dir,
            store=store,
            model=model,
            workers=workers,
            path_prefix=f"{name}/",
        )
        encode(config, interactive=False)
    truth = {name: _truth(root / f"{name}-truth.csv", name, sets[name].truth_csv) for name in sets}
    few_shot = _few_shot_sets(root, labels, sets["examples"].images_dir)
    calibrated = [
        _calibrated(store, path, truth["calibration"], root)
        for path in (labels, few_shot[f"adapter-{max(SHOTS)}"])
    ]
    files = [labels, *few_shot.values(), *(Path(c.written) for c in calibrated)]
    report = evaluate(store, files, truth["test"])
    shots = {load_label_set(path).name: n for path, n in _shots(labels, few_shot, calibrated)}
    return ShiftedResult(count, report, tuple(calibrated), shots)


def _truth(path: Path, prefix: str, synth_truth: Path) -> Path:
    """A truth file (path as stored, label id) from a synthetic set's truth.csv."""
    with synth_truth.open(encoding="utf-8", newline="") as source:
        rows = [
            (f"{prefix}/{r['file']}", TYPE_IDS[r["meter_type"]]) for r in csv.DictReader(source)
        ]
    _write_csv(path, rows)
    return path


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows)


def _few_shot_sets(root: Path, labels: Path, examples: Path) -> dict[str, Path]:
    """Per mode and shot count, the seed's set with an examples file: the first n
    renders of each type (image i is type i mod 3), files outside the store."""
    base = load_label_set(labels)
    with (examples.parent / "truth.csv").open(encoding="utf-8", newline="") as handle:
        rows = [
            (f"{examples.name}/{r['file']}", TYPE_IDS[r["meter_type"]])
            for r in csv.DictReader(handle)
        ]
    written: dict[str, Path] = {}
    for n in SHOTS:
        listing = examples.parent / f"examples-{n}.csv"  # beside examples/images/
        _write_csv(listing, rows[: 3 * n])
        for mode in MODES:
            name = f"{base.name}-{mode}-{n}"
            few = replace(base, name=name, mode=mode, examples_file=str(listing))
            path = root / f"{name}.toml"
            path.write_text(label_set_toml(few), encoding="utf-8")
            written[f"{mode}-{n}"] = path
    return written


def _calibrated(store: Path, labels: Path, truth: Path, root: Path) -> CalibrationReport:
    """The set's temperature fitted on the calibration images, written as NAME-calibrated."""
    name = load_label_set(labels).name
    out = root / f"{name}-calibrated.toml"
    report = calibrate(store, labels, truth, out)
    renamed = replace(load_label_set(out), name=f"{name}-calibrated")
    out.write_text(label_set_toml(renamed), encoding="utf-8")
    return report


def _shots(
    labels: Path, few_shot: dict[str, Path], calibrated: list[CalibrationReport]
) -> list[tuple[Path, int]]:
    pairs = [(labels, 0), *((path, int(key.split("-")[1])) for key, path in few_shot.items())]
    pairs.append((Path(calibrated[0].written), 0))
    pairs.append((Path(calibrated[1].written), max(SHOTS)))
    return pairs


def shifted_table(result: ShiftedResult) -> str:
    """One row per label set: how it was made, accuracy with its interval, calibration."""
    header = ("label set", "mode", "ex./type", "accuracy [95 % CI]", "balanced", "ECE", "NLL")
    rows = [header, *(_row(s, result.shots.get(s.label_set, 0)) for s in result.report.sets)]
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(ljust(c, w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _row(result: SetEvaluation, shots: int) -> tuple[str, ...]:
    figures = result.evaluation
    accuracy = figures.accuracy
    return (
        result.label_set,
        result.mode + (" + calibrated" if result.label_set.endswith("-calibrated") else ""),
        str(shots) if shots else "-",
        f"{accuracy.value:.1%} [{accuracy.low:.1%}, {accuracy.high:.1%}]",
        f"{figures.balanced_accuracy.value:.1%}",
        f"{figures.ece:.3f}",
        f"{figures.nll:.3f}",
    )
