"""The search page in Debian's Chromium: a text typed in gives the grid the API gives,
thumbnails load, and a click shows the image's predictions and its neighbours."""

from __future__ import annotations

import pytest

from meter_batch.labels.search import search
from tests.helpers import browser_missing, chromium

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))

IMAGES_SHOWN = (
    "() => Array.from(document.querySelectorAll('#grid img'))"
    ".every(i => i.complete && (i.naturalWidth > 0 || i.alt === 'link.png'))"
)


def test_the_page_searches_shows_a_grid_and_an_images_predictions(served):
    with chromium() as browser:
        page = browser.new_page()
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.goto(served.url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('images')")
        page.fill("#k", "5")
        page.fill("#text", "a round analog meter")
        page.press("#text", "Enter")
        page.wait_for_function("document.querySelectorAll('#grid li').length === 5")
        shown = page.locator("#grid .path").all_text_contents()
        assert shown == [hit.path for hit in search(served.store, "a round analog meter", k=5)]
        page.wait_for_function(IMAGES_SHOWN)
        page.locator("#grid li").first.click()
        page.wait_for_function("!document.getElementById('chosen').hidden")
        chosen = page.locator("#chosen").inner_text()
        assert shown[0] in chosen and "meter-type" in chosen
        # the click also searched the clicked image's neighbours: itself first
        page.wait_for_function(
            f"document.querySelector('#grid .path').textContent === {shown[0]!r} && "
            "parseFloat(document.querySelector('#grid .score').textContent.split(' ').pop()) > 0.99"
        )
        assert script_errors == []
