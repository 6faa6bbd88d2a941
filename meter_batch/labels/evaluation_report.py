"""An evaluation as the terminal shows it: the label sets side by side, then each set's
classes and confusion matrix."""

from __future__ import annotations

import math
from collections.abc import Callable

from meter_batch.labels.calibrate_run import CalibrationReport
from meter_batch.labels.evaluate_run import EvaluateReport, SetEvaluation
from meter_batch.labels.metrics import Evaluation, Interval
from meter_batch.output import display_width, ljust, rjust

_ROWS: list[tuple[str, Callable[[Evaluation], str]]] = [
    ("images", lambda e: str(e.images)),
    ("accuracy [95 %]", lambda e: _interval(e.accuracy)),
    ("balanced accuracy [95 %]", lambda e: _interval(e.balanced_accuracy)),
    ("ECE (15 bins)", lambda e: _number(e.ece)),
    ("NLL", lambda e: _number(e.nll)),
    ("Brier", lambda e: _number(e.brier)),
    *[
        (
            f"accuracy, {round(c * 100)} % most confident",
            lambda e, i=i: _number(e.accuracy_at_coverage[i][1]),
        )
        for i, c in enumerate((1.0, 0.9, 0.8, 0.5))
    ],
    ("abstained (the set's rule)", lambda e: _number(e.abstained)),
    ("accuracy on what is kept", lambda e: _number(e.kept_accuracy)),
]


def _at_coverage(position: int) -> Callable[[Evaluation], str]:
    return lambda e: _number(e.accuracy_at_coverage[position][1])


def report_text(report: EvaluateReport, verbose: bool = False) -> str:
    found = report.truth_rows - len(report.missing)
    lines = [
        f"truth {report.truth_file}: {report.truth_rows} rows, {found} live images of the "
        f"store, {len(report.missing)} not in it" + ("" if verbose else " (-v lists them)"),
        "",
        _side_by_side(report.sets),
    ]
    for result in report.sets:
        lines += ["", _classes(result), "", _confusion(result)]
    if verbose and report.missing:
        lines += ["", "not in the store:", *(f"  {key}" for key in report.missing)]
    return "\n".join(lines)


def _side_by_side(sets: tuple[SetEvaluation, ...]) -> str:
    header = ["", *(s.label_set for s in sets)]
    version = ["version", *(s.version + ("" if s.stored_version else " (new)") for s in sets)]
    scale = ["logit scale", *(_number(s.logit_scale) for s in sets)]
    mode = ["mode", *(s.mode for s in sets)]
    left_out = ["examples left out", *(str(s.examples_left_out) for s in sets)]
    figures = [[name, *(show(s.evaluation) for s in sets)] for name, show in _ROWS]
    rows = [version, mode, scale, left_out, *figures]
    return _grid([header, *rows])


def _classes(result: SetEvaluation) -> str:
    rows = [[f"{result.label_set}: label", "precision", "recall", "F1", "support"]]
    rows += [
        [c.label, _number(c.precision), _number(c.recall), _number(c.f1), str(c.support)]
        for c in result.evaluation.classes
    ]
    return _grid(rows)


def _confusion(result: SetEvaluation) -> str:
    labels = [c.label for c in result.evaluation.classes]
    rows = [[f"{result.label_set}: true \\ predicted", *labels]]
    rows += [
        [label, *map(str, row)]
        for label, row in zip(labels, result.evaluation.confusion, strict=True)
    ]
    return _grid(rows)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            ljust(cell, w) if i == 0 else rjust(cell, w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _interval(interval: Interval) -> str:
    return f"{_number(interval.value)} [{_number(interval.low)}, {_number(interval.high)}]"


_CALIBRATION_ROWS = ["accuracy [95 %]", "ECE (15 bins)", "NLL", "Brier"]
_CALIBRATION_ROWS += ["abstained (the set's rule)", "accuracy on what is kept"]


def calibration_text(report: CalibrationReport) -> str:
    """Before / after on held-out folds, then the fit the written file holds."""
    shows = dict(_ROWS)
    rows = [["", "before", f"after ({report.folds}-fold, held out)"]]
    rows += [
        [name, shows[name](report.before), shows[name](report.after)] for name in _CALIBRATION_ROWS
    ]
    lines = [f"{report.label_set}: {report.images} truth images of the store", "", _grid(rows), ""]
    lines.append(f"fitted on every image: logit_scale {report.fitted.scale:.4g}")
    labels = [c.label for c in report.before.classes]
    if report.fitted.thresholds:
        pairs = zip(labels, report.fitted.thresholds, strict=True)
        shown = ", ".join(f"{label} {t:.3f}" for label, t in pairs)
        lines.append(f"per-label min_prob: {shown}")
    lines.append(f"written: {report.written} (classify it to use it)")
    return "\n".join(lines)
