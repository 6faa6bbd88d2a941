"""The report in a real browser: Debian's Chromium, headless, driven by Playwright, the
page opened from file://. No console error, no request that is not a file, galleries
as DuckDB counts them, a confusion cell opens exactly its images, HTML in a label id
stays text, and every section's screenshot has a picture in it.

Without /usr/bin/chromium (or Playwright) these tests skip, saying why: `.ci/run`
installs the browser (apt, as root); locally, `apt-get install chromium`."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meter_batch.store.catalog import run_query
from tests.helpers import ALL_CHARTS_DRAWN, browser_missing, chromium, section_screenshots
from tests.report.conftest import HOSTILE, SETTINGS, Reported

_ALL_DRAWN = ALL_CHARTS_DRAWN


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = browser_missing()
    if missing is not None:
        pytest.skip(f"BROWSER TESTS SKIPPED: {missing}")
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def opened(browser: Any, reported: Reported) -> Iterator[tuple[Any, list[str], list[str]]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: _refuse(d, problems))
    page.on("request", lambda r: requests.append(r.url))
    page.goto((reported.out / "index.html").resolve().as_uri())
    page.wait_for_function(_ALL_DRAWN)
    yield page, problems, requests
    page.close()


def test_no_console_error_and_no_request_outside_the_folder(opened, reported):
    _, problems, requests = opened
    assert problems == []
    root = reported.out.resolve().as_uri()
    assert requests and all(url.startswith(root + "/") for url in requests), requests


def test_every_chart_is_drawn(opened):
    page, _, _ = opened
    assert page.locator("[data-spec]").count() >= 6
    assert page.locator(".chart svg, .chart canvas").count() == page.locator("[data-spec]").count()


def test_the_galleries_hold_what_duckdb_counts(opened, reported):
    page, _, _ = opened
    version = reported.result.sets[0]
    rows = run_query(
        reported.store,
        "SELECT top_labels[1] AS label, count(*) AS n FROM latest_predictions "
        "WHERE label_set_version = $v GROUP BY 1",
        {"v": version},
    ).to_pylist()
    counts = {r["label"]: r["n"] for r in rows}
    shown = page.evaluate(
        """() => Array.from(document.querySelectorAll('.gallery[data-kind=most]'))
                 .map(g => [g.dataset.label, g.querySelectorAll('figure.item').length])"""
    )
    assert dict(shown) == {
        label: min(SETTINGS.gallery, counts.get(label, 0)) for label in dict(shown)
    }
    assert HOSTILE in dict(shown)  # every label has its gallery, an empty one too
    loaded = page.evaluate(
        "() => Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert loaded == page.locator("img").count() > 0  # real thumbnails, all of them


def test_a_confusion_cell_opens_exactly_its_images(opened, reported):
    page, _, _ = opened
    truth = _truth(reported.truth)
    buttons = page.locator("#set-1 button.cell")
    assert buttons.count() > 0
    for n in range(buttons.count()):
        button = buttons.nth(n)
        button.click()
        target = page.locator(f"#{button.get_attribute('data-cell')}")
        assert target.is_visible()
        assert page.locator("#set-1 .cell-gallery:visible").count() == 1
        title = target.locator("h4").inner_text()  # "truth A, predicted B"
        want, got = title.removeprefix("truth ").split(", predicted ")
        ids = {int(i) for i in target.locator("figure.item").evaluate_all(
            "items => items.map(i => i.dataset.imageId)")}  # fmt: skip
        assert int(button.inner_text()) == len(ids)
        assert ids == _cell(reported, truth, want, got)


def test_a_label_id_made_of_html_stays_text(opened):
    page, problems, _ = opened
    headings = page.locator(".label-galleries h3").all_inner_texts()
    assert any(text.startswith(HOSTILE) for text in headings)
    assert (
        page.evaluate(
            "() => document.querySelectorAll('body script:not([src]):not([type])').length"
        )
        == 0
    )
    assert not any("dialog" in p for p in problems)


def test_each_section_screenshot_has_a_picture(browser, reported, tmp_path):
    shots = section_screenshots(browser, reported.out / "index.html", tmp_path)
    assert len(shots) == 3  # overview, the label set, the map


def test_a_box_on_the_map_lists_the_images_inside_it(opened):
    page, _, _ = opened
    canvas = page.locator("#chart-map canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] - 5, steps=5)
    page.mouse.up()
    count = page.locator("#map-count").inner_text()
    listed = page.locator("#map-gallery figure.item").count()
    assert count.startswith(f"{listed} images in the box") and 0 < listed <= 14


def test_hovering_a_map_point_shows_its_thumbnail_and_path(opened):
    page, _, _ = opened
    page.reload()  # no box left on the map by another test: it would take the hover
    page.wait_for_function(_ALL_DRAWN)
    canvas = page.locator("#chart-map canvas")
    canvas.scroll_into_view_if_needed()
    point = page.evaluate(
        """() => {
            const view = window.reportViews["chart-map"];
            const spec = JSON.parse(document.getElementById("spec-map").textContent);
            const p = spec.datasets.values[0];
            const [left, top] = view.origin();
            const pad = view.padding();
            return {...p, px: view.scale("x")(p.x) + left + pad.left,
                    py: view.scale("y")(p.y) + top + pad.top};
        }"""
    )
    box = canvas.bounding_box()
    assert box is not None and point["image"]
    page.mouse.move(box["x"] + point["px"], box["y"] + point["py"])
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.locator("img").wait_for()
    # the point under the mouse (another may lie on top of the one aimed at): its
    # thumbnail and path, as the map's data have them
    points = page.evaluate(
        "() => JSON.parse(document.getElementById('spec-map').textContent).datasets.values"
    )
    shown = next(p for p in points if p["path"] and p["path"] in tooltip.inner_text())
    assert tooltip.locator("img").get_attribute("src").endswith(shown["image"])


def _refuse(dialog: Any, problems: list[str]) -> None:
    """An alert() would mean a label's HTML ran as a script."""
    problems.append(f"dialog: {dialog.message}")
    dialog.dismiss()


def _truth(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8", newline="") as handle:
        return {row["path"]: row["label"] for row in csv.DictReader(handle)}


def _cell(reported: Reported, truth: dict[str, str], want: str, got: str) -> set[int]:
    rows = run_query(
        reported.store,
        "SELECT p.image_id, i.path, p.top_labels[1] AS label FROM latest_predictions AS p "
        "JOIN images AS i USING (image_id)",
    ).to_pylist()
    return {r["image_id"] for r in rows if truth[r["path"]] == want and r["label"] == got}
