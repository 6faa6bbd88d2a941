"""The synthetic meter renderer: deterministic, balanced, and its captions say what is drawn."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from meter_batch.tools.synthetic import (
    DISPLAYS,
    HELD_OUT_PHRASES,
    HOUSING_COLOURS,
    HOUSING_RGB,
    METER_TYPES,
    STYLES,
    TYPE_TERMS,
    MeterSpec,
    captions,
    image_rng,
    render,
    render_one,
    sample_spec,
    write_synthetic_set,
)

JA_COLOUR = {"white": "白い", "black": "黒い", "grey": "灰色の", "blue": "青い"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    one = write_synthetic_set(tmp_path / "a", 12, seed=3)
    two = write_synthetic_set(tmp_path / "b", 12, seed=3, workers=2)
    other = write_synthetic_set(tmp_path / "c", 12, seed=4)
    first, second = _files(one.images_dir), _files(two.images_dir)
    assert first == second and len(first) == 12
    assert one.truth_csv.read_text() == two.truth_csv.read_text()
    captions_a = one.captions_csv.read_text().replace(str(one.root), "")
    assert captions_a == two.captions_csv.read_text().replace(str(two.root), "")
    differing = _files(other.images_dir)
    assert not set(first.values()) & set(differing.values())
    prefix = write_synthetic_set(tmp_path / "d", 5, seed=3)  # image i depends on (seed, i)
    assert _files(prefix.images_dir) == {k: first[k] for k in sorted(first)[:5]}


def test_counts_are_exact_and_balanced(tmp_path: Path) -> None:
    written = write_synthetic_set(tmp_path / "s", 30, seed=1, captions_per_image=3)
    with written.truth_csv.open() as handle:
        truth = list(csv.DictReader(handle))
    assert [t["meter_type"] for t in truth].count("digital") == 10
    assert {t["meter_type"] for t in truth} == set(METER_TYPES) and len(truth) == 30
    with written.captions_csv.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 90 and all(Path(r["filepath"]).is_file() for r in rows)
    assert all("\t" not in r["title"] and "\n" not in r["title"] for r in rows)


def _mentions(text: str, meter_type: str) -> bool:
    return any(term.lower() in text.lower() for term in TYPE_TERMS[meter_type])


def test_captions_describe_what_is_drawn() -> None:
    for index in range(300):
        rng = image_rng(11, index)
        spec = sample_spec(rng, METER_TYPES[index % 3])
        if spec.meter_type == "analog":  # the side is the angle's (0 = up, clockwise)
            assert spec.needle_side == ("right" if spec.needle_angle > 0 else "left")
        for text in captions(spec, rng, 4):
            assert _mentions(text, spec.meter_type), text
            others = [t for t in METER_TYPES if t != spec.meter_type]
            assert not any(_mentions(text, t) for t in others), text
            for number in re.findall(r"\d{4,}", text):
                assert number == spec.digits, text
            for colour in HOUSING_COLOURS:
                if colour != spec.housing_colour:
                    assert f"{colour} hous" not in text and f"{colour} cas" not in text
                    assert JA_COLOUR[colour] + "筐体" not in text, text
            for side in ("left", "right"):
                if side != spec.needle_side:
                    assert f"pointing {side}" not in text and f"the {side}" not in text


def test_no_caption_uses_a_held_out_phrase() -> None:
    for index in range(1500):
        rng = image_rng(0, index)
        spec = sample_spec(rng, METER_TYPES[index % 3])
        for text in captions(spec, rng, 3):
            assert not any(p in text.lower() for p in HELD_OUT_PHRASES), text


def _clean(meter_type: str, **changes: object) -> tuple[MeterSpec, np.ndarray]:
    rng = image_rng(5, 0)
    spec = sample_spec(rng, meter_type)
    values = {**spec.__dict__, "size": (200, 200), **changes}
    spec = MeterSpec(**values)
    return spec, np.asarray(render(spec, rng, clean=True), dtype=np.int32)


def test_the_housing_has_the_described_colour() -> None:
    for colour in HOUSING_COLOURS:
        _, pixels = _clean("digital", housing_colour=colour)
        # left of the display band, inside the housing (85 % of the width, centred)
        corner = pixels[97:103, 20:26].reshape(-1, 3).mean(axis=0)
        assert np.abs(corner - HOUSING_RGB[colour]).max() < 12, (colour, corner)


def test_the_needle_tip_is_in_the_described_half() -> None:
    # the needle is what differs from the same dial with its needle pointing straight down
    _, down = _clean("analog", needle_angle=180.0, needle_side="")
    for angle, side in ((-60.0, "left"), (70.0, "right"), (-120.0, "left"), (30.0, "right")):
        _, pixels = _clean("analog", needle_angle=angle, needle_side=side)
        ys, xs = np.nonzero(np.abs(pixels - down).sum(axis=2) > 60)
        away = np.abs(xs - 100) > 8  # not the downward needle of the comparison dial
        ys, xs = ys[away], xs[away]
        far = np.argmax((xs - 100) ** 2 + (ys - 100) ** 2)  # the tip: farthest from the hub
        assert (xs[far] > 100) == (side == "right"), (angle, xs[far])
        assert abs(xs[far] - (100 + math.sin(math.radians(angle)) * 55)) < 15, (angle, xs[far])


def test_a_digital_display_shows_its_colours() -> None:
    for display, (background, lit) in DISPLAYS.items():
        _, pixels = _clean("digital", display=display)
        colours = pixels.reshape(-1, 3)
        for rgb in (background, lit):
            close = np.abs(colours - np.asarray(rgb)).max(axis=1) < 10
            assert close.sum() > 50, (display, rgb)


def test_synth_command_writes_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meter_batch.cli import main

    assert main(["synth", str(tmp_path / "s"), "--count", "6", "--workers", "1"]) == 0
    assert '"images": 6' in capsys.readouterr().out
    assert len(list((tmp_path / "s" / "images").iterdir())) == 6
    assert main(["synth", str(tmp_path / "t"), "--count", "0"]) == 2


def test_synth_refuses_a_folder_with_older_images(tmp_path: Path) -> None:
    from meter_batch.errors import ConfigError

    write_synthetic_set(tmp_path / "s", 3, seed=0)
    with pytest.raises(ConfigError, match="not empty"):
        write_synthetic_set(tmp_path / "s", 2, seed=1)


def test_the_standard_style_is_the_default_and_unchanged() -> None:
    for index in (0, 1, 2, 7):
        assert render_one(3, index, 2, style="standard") == render_one(3, index, 2)
    # the captions come after every draw of the render: an extra or reordered draw anywhere
    # on the standard path changes them (pinned from the renderer the demo model learnt on)
    pinned = [
        ("000000.jpg", ["utility meter: LCD display", "電子式メーター、白いケース、数字は9732"]),
        ("000001.jpg", ["a photo of a mechanical counter, blue casing", "rotary counter"]),
        ("000002.png", ["設置されたアナログ式の丸型メーター", "a photo of a circular gauge"]),
    ]
    assert [render_one(3, i, 2)[::2] for i in range(3)] == pinned


def test_shifted_renders_depend_on_seed_and_index_and_differ_from_standard() -> None:
    for index in range(6):
        name, data, texts, spec = render_one(3, index, 2, style="shifted")
        assert render_one(3, index, 2, style="shifted") == (name, data, texts, spec)
        standard = render_one(3, index, 2)
        # the same meter (so the same truth row), drawn in another look
        assert spec == standard[3] and name == standard[0] and data != standard[1]
        assert data != render_one(4, index, 2, style="shifted")[1]
        assert all(_mentions(text, spec.meter_type) for text in texts)


def test_a_shifted_set_is_written_in_any_number_of_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meter_batch.cli import main

    one = write_synthetic_set(tmp_path / "a", 6, seed=2, style="shifted")
    command = ["synth", str(tmp_path / "b"), "--count", "6", "--seed", "2", "--workers", "2"]
    assert main([*command, "--style", "shifted"]) == 0
    assert '"images": 6' in capsys.readouterr().out
    rendered = [render_one(2, i, 2, style="shifted") for i in range(6)]
    assert _files(one.images_dir) == {name: data for name, data, _, _ in rendered}
    assert _files(one.images_dir) == _files(tmp_path / "b" / "images")
    standard = write_synthetic_set(tmp_path / "c", 6, seed=2)  # the same meters: same truth
    assert standard.truth_csv.read_text() == one.truth_csv.read_text()


def test_an_unknown_style_is_a_config_error(tmp_path: Path) -> None:
    from meter_batch.errors import ConfigError

    assert STYLES == ("standard", "shifted")
    with pytest.raises(ConfigError, match="standard, shifted"):
        render_one(0, 0, 1, style="night")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'night'"):
        write_synthetic_set(tmp_path / "s", 2, seed=0, style="night")  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()  # refused before anything is written
