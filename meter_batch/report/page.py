"""What one report page holds, section by section: the records the runner gathers and
the template lays out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter_batch.report.against_truth import AgainstTruth
from meter_batch.report.projection import MapPoints
from meter_batch.report.queries import Overview, SetSummary, Shown
from meter_batch.store.records import LabelSetEntry


@dataclass(frozen=True)
class Change:
    """What changed from ``before`` (a version of set ``name``) to the set's version."""

    name: str
    before: str
    transitions: list[dict[str, Any]]  # before, after, images
    cells: dict[tuple[str, str], list[Shown]]  # per changed cell, some of its images


@dataclass(frozen=True)
class SetView:
    entry: LabelSetEntry
    summary: SetSummary
    review: list[Shown]  # lowest margins first
    changes: list[Change]  # from the name's previous version; from another set named
    truth: AgainstTruth | None


@dataclass(frozen=True)
class MapView:
    points: MapPoints
    shown: list[Shown]  # the points' predictions under ``version``, in image id order
    version: str | None  # colours the map; None: no label set
    thumbnails: int  # points that get a thumbnail at most (the first ones, evenly spread)

    def with_thumbnails(self) -> list[Shown]:
        step = max(1, -(-len(self.shown) // max(self.thumbnails, 1)))
        return self.shown[::step][: self.thumbnails]


@dataclass(frozen=True)
class Page:
    store: Path
    overview: Overview
    sets: list[SetView]
    map: MapView

    def shown(self) -> Iterator[Shown]:
        """Every image the page shows a thumbnail of."""
        for view in self.sets:
            for items in (*view.summary.most.values(), *view.summary.least.values()):
                yield from items
            yield from view.review
            for change in view.changes:
                for items in change.cells.values():
                    yield from items
            if view.truth is not None:
                for items in view.truth.cells.values():
                    yield from items
        yield from self.map.with_thumbnails()
