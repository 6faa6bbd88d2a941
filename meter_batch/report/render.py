"""The report folder: index.html from a Jinja2 template, its scripts and styles in
assets/, the thumbnails it shows in thumbs/, and one review CSV per label set.

Everything a page needs lies in the folder (Vega, Vega-Lite and vega-embed bundled by
vl-convert into assets/vega.js): it opens from file:// with no network. Every text
from the store (paths, label ids, names) goes through Jinja2's autoescaping, and the
chart specifications through its `tojson`, which escapes <, > and & inside scripts.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from meter_batch.report import charts
from meter_batch.report.page import Page, SetView
from meter_batch.report.queries import HISTOGRAM_BINS
from meter_batch.store.thumbnails import Thumbnail

ASSETS = ("report.js", "report.css")
THUMBS = "thumbs"


def write_report(out: Path, page: Page, pictures: dict[bytes, Thumbnail]) -> Path:
    for folder in (out, out / "assets", out / THUMBS):
        folder.mkdir(parents=True, exist_ok=True)
    _write_assets(out / "assets")
    for thumbnail in pictures.values():
        target = out / thumbnail_url(thumbnail.content_hash)
        if not target.exists():
            _write_atomic(target, thumbnail.webp)
    reviews = {view.entry.version: _write_review(out, view) for view in page.sets}
    html = _template().render(**context(page, pictures, reviews))
    index = out / "index.html"
    _write_atomic(index, html.encode("utf-8"))
    return index


def thumbnail_url(digest: bytes) -> str:
    return f"{THUMBS}/{digest.hex()}.webp"


def context(
    page: Page, pictures: dict[bytes, Thumbnail], reviews: dict[str, str]
) -> dict[str, Any]:
    """What the template lays out: the page's records, chart specifications, and a
    `thumb` lookup (a URL, or None for a placeholder)."""
    overview = page.overview
    points = map_points(page, pictures)
    return {
        "page": page,
        "thumb": lambda item: (
            thumbnail_url(item.content_hash) if item.content_hash in pictures else None
        ),
        "reviews": reviews,
        "runs_chart": charts.runs_chart(overview.runs) if overview.runs else None,
        "failures_chart": _failures_chart(page),
        "set_charts": [_set_charts(view) for view in page.sets],
        "map_chart": charts.map_chart(points) if page.map.shown else None,
    }


def _failures_chart(page: Page) -> charts.Spec | None:
    kinds = [{"kind": f.kind, "count": f.count} for f in page.overview.failures]
    return charts.failures_chart(kinds) if kinds else None


def _set_charts(view: SetView) -> dict[str, Any]:
    summary = view.summary
    found: dict[str, Any] = {
        "counts": charts.label_counts_chart([vars(c) for c in summary.counts]),
        "histograms": charts.histograms_chart(summary.bins, 1 / HISTOGRAM_BINS),
    }
    found["changes"] = [
        charts.transitions_chart(change.transitions, change.before, view.entry.version)
        for change in view.changes
    ]
    if view.truth is not None and view.truth.reliability:
        found["reliability"] = charts.reliability_chart(view.truth.reliability)
    return found


def map_points(page: Page, pictures: dict[bytes, Thumbnail]) -> list[dict[str, Any]]:
    shown = {item.image_id: item for item in page.map.shown}
    with_picture = {item.image_id for item in page.map.with_thumbnails()}
    points = []
    for image_id, (x, y) in zip(
        page.map.points.image_ids.tolist(), page.map.points.xy.tolist(), strict=True
    ):
        item = shown.get(image_id)
        picture = item is not None and image_id in with_picture and item.content_hash in pictures
        points.append(
            {
                "id": image_id,
                "x": round(x, 5),
                "y": round(y, 5),
                "path": item.path if item else "",
                "label": item.label if item else "",
                "prob": round(item.prob, 4) if item else None,
                "image": thumbnail_url(item.content_hash) if item and picture else "",
            }
        )
    return points


def _write_review(out: Path, view: SetView) -> str:
    """review-<name>.csv: path,label of the review queue, the predicted label filled in,
    for a person to correct and give back as --truth or an examples_file."""
    name = f"review-{_slug(view.entry.name)}-{view.entry.version[:8]}.csv"
    rows = [("path", "label"), *((item.path, item.label) for item in view.review)]
    temp = out / f".{name}.tmp"
    with open(temp, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    os.replace(temp, out / name)
    return name


def _slug(text: str) -> str:
    """A file-name-safe form of a label-set name (with a digest: two names never clash)."""
    plain = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "set"
    return f"{plain}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("meter_batch.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("index.html.j2")


def _write_assets(folder: Path) -> None:
    package = resources.files("meter_batch.report") / "static"
    for name in ASSETS:
        _write_atomic(folder / name, (package / name).read_bytes())
    _write_atomic(folder / "vega.js", _vega_bundle().encode("utf-8"))


def _vega_bundle() -> str:
    import vl_convert

    bundle: Any = vl_convert.javascript_bundle  # its stub wants a snippet; None: the default
    return str(bundle(None))


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)
