"""`report`: galleries hold exactly what DuckDB counts, the review CSV is the lowest
margins with their predicted labels, thumbnails are cached once and reused (also when
the files are gone), HTML in a label id is escaped, and the review loop counts the
corrections a person made."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from meter_batch.cli import main
from meter_batch.errors import ConfigError
from meter_batch.ingest.thumbnails import picture
from meter_batch.labels.classify_run import classify
from meter_batch.report.report_run import report
from meter_batch.store.catalog import refresh_catalog, run_query
from meter_batch.store.commit import open_store
from tests.helpers import encode_images, labels_toml, make_images
from tests.report.conftest import HOSTILE, SETTINGS


def _current(store: Path) -> str:
    (row,) = run_query(store, "SELECT version FROM current_label_sets").to_pylist()
    return str(row["version"])


def _top_label_counts(store: Path, version: str) -> dict[str, int]:
    rows = run_query(
        store,
        "SELECT top_labels[1] AS label, count(*) AS n FROM latest_predictions "
        "WHERE label_set_version = $v GROUP BY 1",
        {"v": version},
    ).to_pylist()
    return {r["label"]: r["n"] for r in rows}


def test_the_current_version_is_reported_with_the_previous_one_as_its_change(reported):
    store = open_store(reported.store)
    (version,) = reported.result.sets
    assert version == _current(reported.store)
    assert len(store.manifest.label_sets) == 2  # v1 and the current v2
    html = (reported.out / "index.html").read_text(encoding="utf-8")
    before = next(e.version for e in store.manifest.label_sets if e.version != version)
    assert f"from version {before}" in html


def test_each_gallery_holds_what_duckdb_counts(reported):
    html = (reported.out / "index.html").read_text(encoding="utf-8")
    counts = _top_label_counts(reported.store, _current(reported.store))
    for label, images in counts.items():
        escaped = label.replace("<", "&lt;").replace(">", "&gt;")
        for kind in ("most", "least"):
            block = re.search(
                rf'<div class="gallery" data-kind="{kind}" data-label="{re.escape(escaped)}">'
                r"(.*?)</div>\s*(?=<h4|</div>)",
                html,
                flags=re.S,
            )
            assert block, (kind, label)
            shown = block.group(1).count('<figure class="item"')
            assert shown == min(SETTINGS.gallery, images)


def test_the_review_csv_is_the_lowest_margins_with_their_predicted_labels(reported):
    (review,) = reported.out.glob("review-*.csv")
    with open(review, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = run_query(
        reported.store,
        "SELECT i.path, p.top_labels[1] AS label FROM latest_predictions AS p "
        "JOIN images AS i USING (image_id) ORDER BY p.margin, p.image_id LIMIT $n",
        {"n": SETTINGS.review},
    ).to_pylist()
    assert rows == expected and len(rows) == SETTINGS.review


def test_html_from_the_store_is_text_not_markup(reported):
    html = (reported.out / "index.html").read_text(encoding="utf-8")
    assert HOSTILE not in html  # nowhere raw: not in the page, not in a chart's JSON
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # its gallery's heading
    blocks = re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', html, re.S)
    assert len(blocks) >= 5 and all("<" not in block for block in blocks)
    assert any("\\u003cscript\\u003ealert(1)" in block for block in blocks)  # a chart has it
    assert all(json.loads(block) is not None for block in blocks)


def test_thumbnails_are_made_once_cached_and_outlive_the_files(reported, tmp_path):
    store = open_store(reported.store)
    assert reported.result.thumbnails_made == 14 and reported.result.cached
    assert len(store.manifest.thumbnail_parts) == 1
    again = report(reported.store, (), None, tmp_path / "again", SETTINGS)
    assert (again.thumbnails_made, again.thumbnails_missing) == (0, 0)
    assert len(open_store(reported.store).manifest.thumbnail_parts) == 1  # nothing new
    moved = tmp_path / "moved"
    shutil.move(reported.images, moved)  # every file gone: the cache still has them
    try:
        gone = report(reported.store, (), None, tmp_path / "gone", SETTINGS)
    finally:
        shutil.move(moved, reported.images)
    assert (gone.thumbnails_made, gone.thumbnails_missing) == (0, 0)
    shown = sorted(p.name for p in (tmp_path / "gone" / "thumbs").iterdir())
    assert len(shown) == 14


def test_an_image_gone_without_a_cached_thumbnail_shows_its_path(reported, tmp_path):
    store_copy = tmp_path / "store"
    shutil.copytree(reported.store, store_copy)
    shutil.rmtree(store_copy / "thumbnails")
    _forget_thumbnails(store_copy)
    victim = sorted(reported.relpaths)[0]
    images_copy = tmp_path / "images"
    shutil.copytree(reported.images, images_copy)
    (images_copy / victim).unlink()
    _point_runs_at(store_copy, images_copy)
    result = report(store_copy, (), None, tmp_path / "out", SETTINGS)
    assert (result.thumbnails_made, result.thumbnails_missing) == (13, 1)
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert (
        f'<div class="placeholder" title="no thumbnail: the file is gone or changed">{victim}</div>'
        in html
    )


def test_the_review_loop_counts_the_corrections(reported, tmp_path, capsys):
    (review,) = reported.out.glob("review-*.csv")
    with open(review, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = ["digital", "rotary", HOSTILE]
    corrected = [dict(r) for r in rows]
    for row in corrected[:2]:  # a person corrects two of the five
        row["label"] = next(i for i in ids if i != row["label"])
    truth = tmp_path / "review.csv"
    with open(truth, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label"])
        writer.writeheader()
        writer.writerows(corrected)
    summary = tmp_path / "figures.json"
    argv = ["-q", "evaluate", "--store", str(reported.store), "--labels", str(reported.labels),
            "--truth", str(truth), "--json", str(summary)]  # fmt: skip
    assert main(argv) == 0
    (figures,) = json.loads(summary.read_text())["sets"]
    assert figures["evaluation"]["images"] == 5
    assert figures["evaluation"]["accuracy"]["value"] == pytest.approx(3 / 5)  # 2 of 5 fixed


def test_an_unknown_label_set_name_is_a_one_line_error(reported, tmp_path):
    with pytest.raises(ConfigError, match="no classified label set or version 'nope'"):
        report(reported.store, ("nope",), None, tmp_path / "x", SETTINGS)


def test_a_thumbnail_is_webp_at_most_128_pixels_upright(tmp_path):
    from PIL import Image

    image = Image.new("RGB", (400, 100), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: shown upright, it is tall
    path = tmp_path / "wide.jpg"
    image.save(path, exif=exif)
    made = picture(b"0" * 16, path.read_bytes())
    assert (made.width, made.height) == (32, 128)
    with Image.open(__import__("io").BytesIO(made.webp)) as back:
        assert back.format == "WEBP" and back.size == (32, 128)


def _forget_thumbnails(store: Path) -> None:
    from dataclasses import replace

    from meter_batch.store.commit import commit, locked, next_manifest, open_existing

    with locked(store) as lock:
        opened = open_existing(store, lock)
        commit(opened, replace(next_manifest(opened), thumbnail_parts=(),
               files={k: v for k, v in opened.manifest.files.items()
                      if not k.startswith("thumbnails/")}), [], None)  # fmt: skip


def _point_runs_at(store: Path, images: Path) -> None:
    from dataclasses import replace

    from meter_batch.store.catalog import refresh_catalog
    from meter_batch.store.commit import commit, locked, next_manifest, open_existing

    with locked(store) as lock:
        opened = open_existing(store, lock)
        runs = tuple(replace(r, images_dir=str(images)) for r in opened.manifest.runs)
        commit(opened, next_manifest(opened, runs=runs), [], None)
        refresh_catalog(open_existing(store, lock))


def test_encode_thumbnails_keeps_every_encoded_image_for_a_report_after_deletion(
    tmp_path, configs, monkeypatch
):
    def read_again(source):
        raise AssertionError(f"{source.file} read twice: the decoder makes its thumbnail")

    monkeypatch.setattr("meter_batch.ingest.thumbnails._from_file", read_again)
    images = tmp_path / "images"
    relpaths = make_images(images, 6)
    shutil.copy(images / relpaths[0], images / "copy.jpg")  # the same bytes: one thumbnail
    store = tmp_path / "store"
    summary = encode_images(images, store, str(configs["vit"]), workers=0, thumbnails=True)
    assert (summary.encoded, summary.thumbnails) == (7, 6)
    manifest = open_store(store).manifest
    assert len(manifest.thumbnail_parts) == 1
    again = encode_images(images, store, str(configs["vit"]), workers=0, thumbnails=True)
    assert (again.encoded, again.thumbnails) == (0, 0)  # nothing new, nothing made
    labels = labels_toml(tmp_path, "m", digital="a digital meter", rotary="a rotary counter")
    classify(store, labels, interactive=False)
    shutil.rmtree(images)  # the archive's files deleted after the encode
    result = report(store, (), None, tmp_path / "out", SETTINGS)
    assert (result.thumbnails_made, result.thumbnails_missing) == (0, 0)
    assert len(list((tmp_path / "out" / "thumbs").iterdir())) == 6


def test_two_sets_with_the_same_label_ids_show_what_changed_between_them(reported, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reported.store, store)
    refresh_catalog(open_store(store))  # the copy's catalog names the copy's files
    other = {"digital": "numbers on a screen", "rotary": "a counter", HOSTILE: "a needle"}
    classify(store, labels_toml(tmp_path, "meters-b", **other), interactive=False)
    versions = {e.name: e.version for e in open_store(store).manifest.label_sets}
    report(store, ("meters", "meters-b"), None, tmp_path / "out", SETTINGS)
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    current = _current_of(store, "meters")
    assert f"from label set meters, version {current}" in html
    spec = re.search(r'<script type="application/json" id="spec-changes-2-1">(.*?)</script>', html)
    assert spec
    cells = json.loads(spec.group(1))["datasets"]["values"]
    expected = run_query(
        store,
        "SELECT a.label AS before, b.label AS after, count(*) AS images FROM predictions AS a "
        "JOIN predictions AS b USING (image_id) WHERE a.label_set_version = $a "
        "AND b.label_set_version = $b GROUP BY ALL ORDER BY ALL",
        {"a": current, "b": versions["meters-b"]},
    ).to_pylist()
    assert cells == expected and sum(c["images"] for c in cells) == 14


def _current_of(store: Path, name: str) -> str:
    rows = run_query(
        store, "SELECT version FROM current_label_sets WHERE name = $n", {"n": name}
    ).to_pylist()
    return str(rows[0]["version"])


def test_a_damaged_thumbnail_part_is_found_by_verify_and_dropped_by_repair(
    reported, tmp_path, capsys
):
    store = tmp_path / "store"
    shutil.copytree(reported.store, store)
    refresh_catalog(open_store(store))
    (part,) = open_store(store).manifest.thumbnail_parts
    (store / part).write_bytes((store / part).read_bytes()[:-40])
    assert main(["verify", "--quick", str(store)]) == 8
    assert part in capsys.readouterr().out
    assert main(["repair", str(store)]) != 0  # not derived: only --drop-damaged takes it out
    assert "the next report makes its thumbnails again" in capsys.readouterr().out
    assert main(["repair", "--drop-damaged", str(store)]) == 0
    assert open_store(store).manifest.thumbnail_parts == ()
    assert main(["verify", str(store)]) == 0
    _point_runs_at(store, reported.images)
    again = report(store, (), None, tmp_path / "out", SETTINGS)
    assert (again.thumbnails_made, again.thumbnails_missing) == (14, 0)  # made anew
