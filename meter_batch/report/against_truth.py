"""A label set's predictions against a truth file: the confusion cells with their
images, and the reliability diagram's bins (the same 15 bins as evaluate's ECE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meter_batch.errors import ConfigError
from meter_batch.labels.metrics import ECE_BINS
from meter_batch.labels.truth import Truth
from meter_batch.report.queries import Shown, predictions_of
from meter_batch.store.commit import Store
from meter_batch.store.read import live_ids_of_paths


@dataclass(frozen=True)
class AgainstTruth:
    labels: tuple[str, ...]  # the set's label ids, rows and columns of the matrix
    cells: dict[tuple[str, str], list[Shown]]  # (truth, top label) -> its images
    reliability: list[dict[str, Any]]  # confidence, accuracy, images per bin
    matched: int  # truth rows whose image is live and scored by the version
    unmatched: int  # the others: not in the store (or no longer), or not scored


def against_truth(
    store: Store, name: str, version: str, label_ids: tuple[str, ...], truth: Truth
) -> AgainstTruth:
    unknown = sorted(set(truth.labels) - set(label_ids))
    if unknown:
        raise ConfigError(
            f"truth file {truth.file} has labels that label set {name} (version {version}) "
            f"does not have: {', '.join(map(repr, unknown[:5]))}; its ids: {', '.join(label_ids)}"
        )
    wanted = _truth_by_id(store, truth)
    shown = predictions_of(store.root, version, sorted(wanted))
    cells: dict[tuple[str, str], list[Shown]] = {}
    for item in shown:
        cells.setdefault((wanted[item.image_id], item.label), []).append(item)
    return AgainstTruth(
        label_ids,
        cells,
        reliability_bins([(s.prob, wanted[s.image_id] == s.label) for s in shown]),
        len(shown),
        len(truth.keys) - len(shown),
    )


def reliability_bins(
    answers: list[tuple[float, bool]], bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin of top probability: mean confidence, accuracy, images."""
    grouped: dict[int, list[tuple[float, bool]]] = {}
    for prob, right in answers:
        grouped.setdefault(min(int(prob * bins), bins - 1), []).append((prob, right))
    return [
        {
            "confidence": sum(p for p, _ in rows) / len(rows),
            "accuracy": sum(r for _, r in rows) / len(rows),
            "images": len(rows),
        }
        for _, rows in sorted(grouped.items())
    ]


def _truth_by_id(store: Store, truth: Truth) -> dict[int, str]:
    """Image id -> truth label, for the truth rows whose image is live in the store."""
    if truth.key == "image_id":
        return {int(k): label for k, label in zip(truth.keys, truth.labels, strict=True)}
    ids = live_ids_of_paths(store, [str(k) for k in truth.keys])
    return {
        ids[str(k)]: label
        for k, label in zip(truth.keys, truth.labels, strict=True)
        if str(k) in ids
    }
