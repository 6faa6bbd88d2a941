"""What the report shows, as aggregates DuckDB computes over the store's catalog.

Every figure is a GROUP BY or a window over the catalog's views, so a million-image
store costs DuckDB's time, never a million Python objects: only the rows the report
shows (gallery images, the review queue, chart bins) come back. Label ids, paths and
versions are bound as parameters, never spliced into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter_batch.store.catalog import run_query


@dataclass(frozen=True)
class Shown:
    """An image the report shows: where it is, and what a label set said of it."""

    image_id: int
    path: str
    content_hash: bytes
    run_id: str
    label: str
    prob: float
    margin: float
    runner_up: str


@dataclass(frozen=True)
class FailureKind:
    kind: str
    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Overview:
    live: int
    deleted: int
    superseded: int
    failed: int
    runs: list[dict[str, Any]]  # run_id, finished_at, encoded, seconds, images_per_s
    failures: list[FailureKind]


@dataclass(frozen=True)
class LabelCount:
    label: str
    images: int
    abstained: int


@dataclass(frozen=True)
class SetSummary:
    name: str
    version: str
    counts: list[LabelCount]
    bins: list[dict[str, Any]]  # label, measure (prob | margin), bin (lower edge), images
    most: dict[str, list[Shown]]  # per label: the most confident first
    least: dict[str, list[Shown]]  # per label: the least confident first


HISTOGRAM_BINS = 20
_LIVE = """WITH predictions_live AS (
    SELECT * FROM predictions WHERE image_id IN (SELECT image_id FROM images)) """
FAILURE_EXAMPLES = 3


def overview(store: Path) -> Overview:
    counts = _rows(
        store,
        """SELECT (SELECT count(*) FROM images) AS live,
                  (SELECT count(*) FROM tombstones WHERE reason = 'deleted'
                     AND image_id IS NOT NULL) AS deleted,
                  (SELECT count(*) FROM tombstones WHERE reason = 'superseded') AS superseded,
                  (SELECT count(*) FROM failures) AS failed""",
    )[0]
    runs = _rows(
        store,
        """SELECT run_id, strftime(finished_at, '%Y-%m-%d %H:%M') AS finished_at, encoded,
                  seconds, CASE WHEN seconds > 0 THEN encoded / seconds END AS images_per_s
           FROM runs ORDER BY finished_at""",
    )
    kinds = _rows(
        store,
        """SELECT kind, count(*) AS count,
                  list(path ORDER BY path)[1:$examples] AS examples
           FROM failures GROUP BY kind ORDER BY count DESC, kind""",
        {"examples": FAILURE_EXAMPLES},
    )
    failures = [FailureKind(k["kind"], k["count"], tuple(k["examples"])) for k in kinds]
    return Overview(**counts, runs=runs, failures=failures)


def set_summary(
    store: Path, name: str, version: str, label_ids: tuple[str, ...], gallery: int
) -> SetSummary:
    """Every label of the set (one no image has as its top label too, with 0 images)."""
    params = {"version": version}
    counts = _rows(
        store,
        _LIVE
        + """SELECT top_labels[1] AS label, count(*) AS images,
                  count(*) FILTER (WHERE abstained) AS abstained
           FROM predictions_live WHERE label_set_version = $version
           GROUP BY 1 ORDER BY images DESC, label""",
        params,
    )
    bins = _rows(
        store,
        _LIVE
        + """SELECT top_labels[1] AS label, measure,
                  least(floor(value * $bins), $bins - 1) / $bins AS bin, count(*) AS images
           FROM predictions_live,
                LATERAL (VALUES ('prob', prob), ('margin', margin)) AS m(measure, value)
           WHERE label_set_version = $version AND isfinite(value)
           GROUP BY ALL ORDER BY ALL""",
        {**params, "bins": HISTOGRAM_BINS},
    )
    most = _by_label(gallery_of(store, version, "prob DESC", gallery))
    least = _by_label(gallery_of(store, version, "prob ASC", gallery))
    found = {c["label"]: LabelCount(**c) for c in counts}
    ordered = sorted(label_ids, key=lambda label: -found[label].images if label in found else 0)
    every = [found.get(label, LabelCount(label, 0, 0)) for label in ordered]
    return SetSummary(name, version, every, bins, most, least)


_SHOWN = """p.image_id, i.path, i.content_hash, i.run_id, p.top_labels[1] AS label,
            p.prob, p.margin, coalesce(p.top_labels[2], '') AS runner_up"""


def gallery_of(store: Path, version: str, order: str, per_label: int) -> list[Shown]:
    """Per top label, ``per_label`` images in ``order`` (a fixed ORDER BY of ours)."""
    assert order in ("prob DESC", "prob ASC")
    sql = f"""SELECT {_SHOWN}
              FROM predictions AS p JOIN images AS i USING (image_id)
              WHERE p.label_set_version = $version
              QUALIFY row_number() OVER (
                  PARTITION BY p.top_labels[1] ORDER BY p.{order}, p.image_id) <= $n
              ORDER BY label, p.{order}, p.image_id"""
    return [Shown(**r) for r in _rows(store, sql, {"version": version, "n": per_label})]


def review_queue(store: Path, version: str, count: int) -> list[Shown]:
    """The images closest to a decision: the lowest margins first."""
    sql = f"""SELECT {_SHOWN}
              FROM predictions AS p JOIN images AS i USING (image_id)
              WHERE p.label_set_version = $version AND isfinite(p.margin)
              ORDER BY p.margin, p.image_id LIMIT $n"""
    return [Shown(**r) for r in _rows(store, sql, {"version": version, "n": count})]


def transitions(store: Path, before: str, after: str) -> list[dict[str, Any]]:
    """(before label, after label, images) over the live images both versions scored."""
    return _rows(
        store,
        """SELECT a.label AS before, b.label AS after, count(*) AS images
           FROM predictions AS a JOIN predictions AS b USING (image_id)
           WHERE a.label_set_version = $before AND b.label_set_version = $after
             AND image_id IN (SELECT image_id FROM images)
           GROUP BY ALL ORDER BY ALL""",
        {"before": before, "after": after},
    )


def changed_images(
    store: Path, before: str, after: str, per_cell: int
) -> dict[tuple[str, str], list[Shown]]:
    """Per changed (before, after) cell, up to ``per_cell`` images (as ``after`` saw them)."""
    sql = f"""SELECT {_SHOWN}, a.label AS before
              FROM predictions AS a JOIN predictions AS p USING (image_id)
                   JOIN images AS i USING (image_id)
              WHERE a.label_set_version = $before AND p.label_set_version = $after
                AND a.label <> p.label
              QUALIFY row_number() OVER (
                  PARTITION BY a.label, p.label ORDER BY p.margin DESC, image_id) <= $n
              ORDER BY before, label, p.margin DESC, image_id"""
    cells: dict[tuple[str, str], list[Shown]] = {}
    for row in _rows(store, sql, {"before": before, "after": after, "n": per_cell}):
        before_label = row.pop("before")
        cells.setdefault((before_label, row["label"]), []).append(Shown(**row))
    return cells


def predictions_of(store: Path, version: str, image_ids: list[int]) -> list[Shown]:
    """What ``version`` said of each of ``image_ids`` (those it scored and still live)."""
    sql = f"""SELECT {_SHOWN}
              FROM predictions AS p JOIN images AS i USING (image_id)
              WHERE p.label_set_version = $version AND list_contains($ids, p.image_id)
              ORDER BY p.image_id"""
    return [Shown(**r) for r in _rows(store, sql, {"version": version, "ids": image_ids})]


def _by_label(shown: list[Shown]) -> dict[str, list[Shown]]:
    grouped: dict[str, list[Shown]] = {}
    for item in shown:
        grouped.setdefault(item.label, []).append(item)
    return grouped


def _rows(store: Path, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return run_query(store, sql, params).to_pylist()
