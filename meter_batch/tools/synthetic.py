"""Synthetic meter photos with captions: training data for the demo model, and test data.

Three meter types — a digital 7-segment display, a rotary (number-wheel) counter, a
round analog gauge — drawn procedurally with Pillow, in varied housings, backgrounds,
lighting, perspective, blur, noise, glare and JPEG quality. Every image comes with
captions in English and Japanese that describe what is drawn (type, digits, colours,
needle side), phrased many ways, as a team's own photo descriptions would read.
Image i of a set depends only on (seed, i): a held-out set is simply another seed.

Two styles. ``standard`` is what the shipped demo model was trained on; it must stay
bit for bit as it is (its draws from image_rng, in their order). ``shifted`` is a look
that model never saw, for measuring zero-shot drop and few-shot adaptation: image i
shows the same meter (the same spec, so the same truth.csv row) as standard image i, but
everything drawn after the spec comes from shifted_rng(seed, i), a stream of its own, so
image i depends only on (seed, i, style). The shifted look:

* other digit shapes and dial: dot-matrix (5x7) digits on digital displays; number wheels
  in cream / aluminium / brown with wobbly pen-stroke digits; a dial with green / amber /
  red zones, dot ticks and a tapered needle;
* a steep perspective tilt (one edge pulled in 12-25 %, against _warp's 8 %; rotation ±20°);
* light: night (dark, blue-ish cast, sensor noise), on-camera flash (hotspot, dark
  edges) or the standard day light, by the weights in LIGHTS;
* sometimes (P_OCCLUDE) an opaque finger, pipe or paper tag over 10-30 % of the meter;
* sometimes (P_DIRT) dirty glass: soft brownish smudges and dust specks;
* then the standard blur, noise and JPEG quality.

Tuned (P_OCCLUDE, P_DIRT, LIGHTS, the brown wheels' weight) so that the demo model,
with meter-type.toml, classifies 300 shifted renders of seed 1_000_003 at 87 % (84-88 %
on other seeds), against 99 % for the standard ones.
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from meter_batch.errors import ConfigError

METER_TYPES = ("digital", "rotary", "analog")
# standard: the demo model's training look; shifted: one it never saw (see the docstring)
Style = Literal["standard", "shifted"]
STYLES: tuple[str, ...] = get_args(Style)
HOUSING_RGB = {
    "white": (232, 232, 226),
    "black": (34, 34, 38),
    "grey": (128, 131, 134),
    "blue": (38, 78, 168),
}
HOUSING_COLOURS = tuple(HOUSING_RGB)
DISPLAYS = {  # name -> (background, lit segment)
    "lcd": ((152, 170, 140), (28, 36, 28)),
    "led-red": ((18, 12, 12), (250, 40, 30)),
    "led-green": ((10, 18, 12), (60, 240, 90)),
    "led-amber": ((20, 14, 8), (255, 170, 20)),
    "led-blue": ((8, 12, 22), (70, 150, 255)),
}
# Kept out of every caption: the demo's rephrased label set uses them (truly unseen text).
HELD_OUT_PHRASES = (
    "electronic number readout",
    "mechanical counter wheels",
    "circular dial with a pointer",
    "meter body is",
)
TYPE_TERMS: dict[str, tuple[str, ...]] = {
    "digital": (
        "digital meter",
        "7-segment display",
        "seven-segment display",
        "LCD display",
        "digital readout",
        "electronic meter",
        "electronic display",
        "segment display meter",
        "デジタルメーター(7セグ)",
        "7セグメント表示のデジタルメーター",
        "デジタル表示のメーター",
        "電子式メーター",
        "7セグ表示のメーター",
    ),
    "rotary": (
        "rotary meter",
        "rotary counter",
        "odometer-style counter",
        "number wheel counter",
        "drum counter",
        "mechanical counter",
        "mechanical register",
        "cyclometer register",
        "回転式メーター",
        "数字車の回転式カウンター",
        "ドラム式カウンターのメーター",
        "機械式カウンター",
        "回転ドラム式メーター",
    ),
    "analog": (
        "analog gauge",
        "round analog meter",
        "dial gauge",
        "needle gauge",
        "round dial",
        "circular gauge",
        "pointer gauge",
        "analog dial with a needle",
        "アナログメーター丸型",
        "丸型のアナログ計器",
        "指針式メーター",
        "針のある丸いメーター",
        "アナログ式の丸型メーター",
    ),
}
_JA_COLOUR = {"white": "白い", "black": "黒い", "grey": "灰色の", "blue": "青い"}
_SEGMENTS = {  # which of a..g are lit, per digit
    "0": "abcdef",
    "1": "bc",
    "2": "abged",
    "3": "abgcd",
    "4": "fgbc",
    "5": "afgcd",
    "6": "afgedc",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
}


@dataclass(frozen=True)
class MeterSpec:
    """Everything that is drawn and described about one meter photo."""

    meter_type: str
    housing_colour: str
    digits: str  # digital / rotary; "" for analog
    display: str  # digital only: a DISPLAYS key
    needle_side: str  # analog only: "left" / "right" half of the dial holds the needle tip
    needle_angle: float  # analog only: degrees, 0 = straight up, clockwise
    size: tuple[int, int]
    jpeg_quality: int  # 0: saved as PNG


def image_rng(seed: int, index: int) -> random.Random:
    """The random stream of image ``index`` of set ``seed`` (independent of set size)."""
    return random.Random(f"meter:{seed}:{index}")


def sample_spec(rng: random.Random, meter_type: str) -> MeterSpec:
    long_side = rng.randint(112, 224)
    ratio = rng.choice((4 / 3, 3 / 4, 16 / 9, 1.0, 3 / 2, 2 / 3))
    size = (
        (long_side, round(long_side / ratio))
        if ratio >= 1
        else (round(long_side * ratio), long_side)
    )
    angle = rng.uniform(-130, 130)
    while abs(angle) < 12:  # a needle near vertical has no clear side
        angle = rng.uniform(-130, 130)
    return MeterSpec(
        meter_type=meter_type,
        housing_colour=rng.choice(HOUSING_COLOURS),
        digits="" if meter_type == "analog" else _digits(rng),
        display=rng.choice(tuple(DISPLAYS)) if meter_type == "digital" else "",
        needle_side=("right" if angle > 0 else "left") if meter_type == "analog" else "",
        needle_angle=angle if meter_type == "analog" else 0.0,
        size=size,
        jpeg_quality=0 if rng.random() < 0.15 else rng.randint(40, 95),
    )


def _digits(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 7)))


def render(spec: MeterSpec, rng: random.Random, clean: bool = False) -> Image.Image:
    """The photo: a meter layer drawn at 2x, warped, lit, composited, then degraded.

    ``clean`` (tests): plain background, centred, no warp / light / glare / blur / noise."""
    width, height = spec.size[0] * 2, spec.size[1] * 2
    colour = _jitter(rng, HOUSING_RGB[spec.housing_colour], 0 if clean else 10)
    box = _housing_box(rng, spec.meter_type, (width, height), clean)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    _draw_housing(draw, rng, spec.meter_type, box, colour)
    {"digital": _draw_digital, "rotary": _draw_rotary, "analog": _draw_analog}[spec.meter_type](
        draw, rng, spec, box
    )
    if not clean:
        layer = _warp(layer, rng)
    photo = _background(rng, (width, height), clean)
    photo.alpha_composite(layer)
    image = photo.convert("RGB")
    if not clean:
        image = _light_and_glare(image, rng)
    image = image.resize(spec.size, Image.Resampling.LANCZOS)
    return image if clean else _degrade(image, rng)


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _housing_box(
    rng: random.Random, meter_type: str, canvas: tuple[int, int], clean: bool
) -> tuple[int, int, int, int]:
    width, height = canvas
    fill = 0.85 if clean else rng.uniform(0.6, 0.92)
    if meter_type == "analog":
        box_w = box_h = int(fill * min(width, height))
    else:
        box_w = int(fill * width)
        box_h = min(int(box_w * rng.uniform(0.5, 0.8)), int(0.92 * height))
    slack_x, slack_y = width - box_w, height - box_h
    # off-centre, but not so far that open_clip's center crop cuts the meter away
    left = slack_x // 2 if clean else int(slack_x * rng.uniform(0.25, 0.75))
    top = slack_y // 2 if clean else int(slack_y * rng.uniform(0.3, 0.7))
    return left, top, left + box_w, top + box_h


def _draw_housing(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    meter_type: str,
    box: tuple[int, int, int, int],
    colour: tuple[int, ...],
) -> None:
    edge = tuple(max(0, c - 45) for c in colour)
    width = box[2] - box[0]
    if meter_type == "analog" and rng.random() < 0.6:
        draw.ellipse(box, fill=colour, outline=edge, width=max(2, width // 40))
        return
    radius = int(width * rng.uniform(0.02, 0.15))
    draw.rounded_rectangle(box, radius, fill=colour, outline=edge, width=max(2, width // 50))
    for corner in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
        if rng.random() < 0.5:  # screws
            x = corner[0] + (width // 14 if corner[0] == box[0] else -width // 14)
            y = corner[1] + (width // 14 if corner[1] == box[1] else -width // 14)
            r = max(2, width // 60)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=edge)


def _band(box: tuple[int, int, int, int], rng: random.Random) -> tuple[int, int, int, int]:
    """The display / window area: a wide band across the middle of the housing."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    inset_x = int(w * rng.uniform(0.08, 0.14))
    band_h = int(h * rng.uniform(0.34, 0.5))
    y0 = top + int((h - band_h) * rng.uniform(0.35, 0.6))
    return left + inset_x, y0, right - inset_x, y0 + band_h


def _draw_digital(
    draw: ImageDraw.ImageDraw, rng: random.Random, spec: MeterSpec, box: tuple[int, int, int, int]
) -> None:
    background, lit = DISPLAYS[spec.display]
    band = _band(box, rng)
    draw.rectangle(band, fill=background, outline=(20, 20, 20), width=2)
    count = len(spec.digits)
    pad = (band[3] - band[1]) * 0.16
    cell = (band[2] - band[0] - 2 * pad) / count
    for n, digit in enumerate(spec.digits):
        x0 = band[0] + pad + n * cell
        _seven_segment(
            draw, digit, (x0 + cell * 0.12, band[1] + pad, x0 + cell * 0.88, band[3] - pad), lit
        )


def _seven_segment(
    draw: ImageDraw.ImageDraw,
    digit: str,
    box: tuple[float, float, float, float],
    lit: tuple[int, int, int],
) -> None:
    x0, y0, x1, y1 = box
    t = max(1.5, (x1 - x0) * 0.18)  # stroke thickness
    ym = (y0 + y1) / 2
    bars = {
        "a": (x0 + t, y0, x1 - t, y0 + t),
        "g": (x0 + t, ym - t / 2, x1 - t, ym + t / 2),
        "d": (x0 + t, y1 - t, x1 - t, y1),
        "f": (x0, y0 + t, x0 + t, ym - t / 2),
        "b": (x1 - t, y0 + t, x1, ym - t / 2),
        "e": (x0, ym + t / 2, x0 + t, y1 - t),
        "c": (x1 - t, ym + t / 2, x1, y1 - t),
    }
    for name in _SEGMENTS[digit]:
        draw.rectangle(bars[name], fill=lit)


def _draw_rotary(
    draw: ImageDraw.ImageDraw, rng: random.Random, spec: MeterSpec, box: tuple[int, int, int, int]
) -> None:
    band = _band(box, rng)
    draw.rectangle(band, fill=(18, 18, 18))
    white_wheels = rng.random() < 0.6
    red_last = rng.random() < 0.35
    count = len(spec.digits)
    cell = (band[2] - band[0]) / count
    height = band[3] - band[1]
    font = ImageFont.load_default(size=max(8, int(height * 0.62)))
    for n, digit in enumerate(spec.digits):
        x0 = band[0] + n * cell + max(1, cell * 0.06)
        x1 = band[0] + (n + 1) * cell - max(1, cell * 0.06)
        face = (240, 238, 230) if white_wheels else (30, 30, 30)
        ink = (20, 20, 20) if white_wheels else (235, 235, 235)
        if red_last and n == count - 1:
            face, ink = (200, 30, 30), (250, 250, 250)
        draw.rectangle((x0, band[1] + 2, x1, band[3] - 2), fill=face)
        shift = height * rng.uniform(-0.12, 0.12)  # wheels rest a little off-centre
        centre = ((x0 + x1) / 2, (band[1] + band[3]) / 2 + shift)
        draw.text(centre, digit, fill=ink, font=font, anchor="mm")
        # shading: the drum curves away at top and bottom
        draw.rectangle((x0, band[1] + 2, x1, band[1] + height * 0.12), fill=_shade(face))
        draw.rectangle((x0, band[3] - height * 0.12, x1, band[3] - 2), fill=_shade(face))


def _shade(rgb: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(c * 0.6) for c in rgb)


def _draw_analog(
    draw: ImageDraw.ImageDraw, rng: random.Random, spec: MeterSpec, box: tuple[int, int, int, int]
) -> None:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    radius = (box[2] - box[0]) / 2 * rng.uniform(0.72, 0.84)
    face = rng.choice(((245, 245, 240), (238, 230, 205), (25, 25, 28)))
    ink = (20, 20, 20) if face[0] > 128 else (235, 235, 235)
    draw.ellipse(
        (cx - radius, cy - radius, cx + radius, cy + radius), fill=face, outline=ink, width=2
    )
    for step in range(0, 41):
        angle = math.radians(-135 + step * 270 / 40)
        inner = radius * (0.74 if step % 5 == 0 else 0.84)
        sx, sy = math.sin(angle), -math.cos(angle)
        draw.line(
            (cx + sx * inner, cy + sy * inner, cx + sx * radius * 0.93, cy + sy * radius * 0.93),
            fill=ink,
            width=max(1, int(radius / (22 if step % 5 == 0 else 45))),
        )
    needle = rng.choice(((210, 30, 30), ink, (240, 120, 20)))
    angle = math.radians(spec.needle_angle)
    tip = (cx + math.sin(angle) * radius * 0.8, cy - math.cos(angle) * radius * 0.8)
    draw.line((cx, cy, *tip), fill=needle, width=max(2, int(radius / 14)))
    cap = radius * 0.09
    draw.ellipse((cx - cap, cy - cap, cx + cap, cy + cap), fill=(60, 60, 60))


def _background(rng: random.Random, size: tuple[int, int], clean: bool) -> Image.Image:
    base = (150, 140, 120) if clean else tuple(rng.randint(40, 220) for _ in range(3))
    if clean:
        return Image.new("RGBA", size, (*base, 255))
    width, height = size
    kind = rng.choice(("solid", "gradient", "noise", "stripes", "bricks", "clutter"))
    array: np.ndarray = np.empty((height, width, 3), dtype=np.float32)
    array[:] = base
    np_rng = np.random.default_rng(rng.getrandbits(32))
    if kind == "gradient":
        other = np.array([rng.randint(30, 230) for _ in range(3)], dtype=np.float32)
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        array = array * (1 - ramp) + other * ramp
    elif kind == "noise":
        array += (
            np_rng.normal(0, 18, (height // 8 + 1, width // 8 + 1, 1))
            .repeat(8, 0)
            .repeat(8, 1)[:height, :width]
        )
    elif kind in ("stripes", "bricks"):
        period = rng.randint(10, 40)
        rows = (np.arange(height) // period) % 2
        array[rows == 1] *= 0.8
        if kind == "bricks":
            array[(np.arange(height) % period) < 2] = 200
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).convert("RGBA")
    if kind == "clutter":
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(3, 9)):
            x, y = rng.randint(0, width), rng.randint(0, height)
            r = rng.randint(5, max(6, width // 4))
            draw.rectangle(
                (x, y, x + r, y + r // 2), fill=tuple(rng.randint(0, 255) for _ in range(3))
            )
    return image


def _warp(layer: Image.Image, rng: random.Random) -> Image.Image:
    """A small rotation plus a perspective tilt, as a hand-held photo has."""
    layer = layer.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC)
    width, height = layer.size
    d = 0.08
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    moved = [(x + rng.uniform(-d, d) * width, y + rng.uniform(-d, d) * height) for x, y in corners]
    return layer.transform(
        layer.size,
        Image.Transform.PERSPECTIVE,
        _perspective(moved, corners),
        Image.Resampling.BICUBIC,
    )


def _perspective(source: list[tuple[float, float]], target: list[tuple[int, int]]) -> list[float]:
    rows = []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs = np.array([c for point in source for c in point], dtype=np.float64)
    return list(np.linalg.solve(np.array(rows, dtype=np.float64), rhs))


def _light_and_glare(image: Image.Image, rng: random.Random) -> Image.Image:
    width, height = image.size
    array: np.ndarray = np.asarray(image, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    gain = rng.uniform(0.7, 1.15) + rng.uniform(0, 0.3) * (
        xs * math.cos(angle) + ys * math.sin(angle)
    )
    array = array * gain[:, :, None]
    if rng.random() < 0.35:
        gx, gy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.25) * width, rng.uniform(0.03, 0.15) * height
        glare = np.exp(
            -(((xs + 1) * width / 2 - gx) ** 2 / rx**2 + ((ys + 1) * height / 2 - gy) ** 2 / ry**2)
        )
        array = array + rng.uniform(60, 160) * glare[:, :, None]
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    radius = rng.choice((0.0, 0.0, 0.4, 0.8, 1.2))
    if radius:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    sigma = rng.choice((0.0, 2.0, 4.0, 7.0))
    if sigma:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(
            0, sigma, (image.height, image.width, 3)
        )
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    return image


# --- the shifted style --------------------------------------------------------------------

_DOT_FONT = {  # 5x7 dot-matrix digits, top row first
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}
_STROKES = {  # one pen stroke per digit, in a unit box (x right, y down)
    "0": (
        (0.5, 0),
        (0.15, 0.2),
        (0.1, 0.5),
        (0.15, 0.8),
        (0.5, 1),
        (0.85, 0.8),
        (0.9, 0.5),
        (0.85, 0.2),
        (0.5, 0),
    ),
    "1": ((0.3, 0.2), (0.55, 0), (0.55, 1)),
    "2": ((0.15, 0.2), (0.5, 0), (0.85, 0.2), (0.8, 0.45), (0.15, 1), (0.9, 1)),
    "3": ((0.15, 0.1), (0.5, 0), (0.85, 0.2), (0.5, 0.48), (0.85, 0.75), (0.5, 1), (0.15, 0.9)),
    "4": ((0.7, 1), (0.7, 0), (0.1, 0.7), (0.9, 0.7)),
    "5": ((0.85, 0), (0.2, 0), (0.15, 0.45), (0.6, 0.4), (0.85, 0.65), (0.6, 1), (0.15, 0.9)),
    "6": (
        (0.8, 0.05),
        (0.4, 0.1),
        (0.15, 0.55),
        (0.25, 0.95),
        (0.6, 1),
        (0.85, 0.75),
        (0.6, 0.5),
        (0.2, 0.6),
    ),
    "7": ((0.1, 0), (0.9, 0), (0.4, 1)),
    "8": (
        (0.5, 0.5),
        (0.2, 0.3),
        (0.5, 0),
        (0.8, 0.25),
        (0.5, 0.5),
        (0.15, 0.75),
        (0.5, 1),
        (0.85, 0.75),
        (0.5, 0.5),
    ),
    "9": ((0.8, 0.4), (0.4, 0.5), (0.15, 0.25), (0.45, 0), (0.8, 0.15), (0.85, 0.5), (0.6, 1)),
}
# How often each shifted effect is applied (tuned so the demo model lands near 80-95 %).
P_OCCLUDE = 0.2
P_DIRT = 0.35
LIGHTS = {"night": 0.12, "flash": 0.2, "day": 0.68}  # kind -> weight


def shifted_rng(seed: int, index: int) -> random.Random:
    """The look of shifted image ``index`` of set ``seed``: a stream apart from image_rng's."""
    return random.Random(f"meter-shifted:{seed}:{index}")


def check_style(style: str) -> None:
    if style not in STYLES:
        raise ConfigError(f"unknown synthetic style {style!r}: one of {', '.join(STYLES)}")


def render_shifted(spec: MeterSpec, rng: random.Random) -> Image.Image:
    """``spec`` in the shifted style: other digit shapes and dial, a steep tilt, maybe an
    occluder, night / flash / day light, maybe dirty glass, then the usual blur and noise."""
    width, height = spec.size[0] * 2, spec.size[1] * 2
    colour = _jitter(rng, HOUSING_RGB[spec.housing_colour], 10)
    box = _housing_box(rng, spec.meter_type, (width, height), False)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    _draw_housing(draw, rng, spec.meter_type, box, colour)
    drawers = {"digital": _draw_dot_matrix, "rotary": _draw_hand_wheels, "analog": _draw_dial}
    drawers[spec.meter_type](draw, rng, spec, box)
    if rng.random() < P_OCCLUDE:  # drawn on the meter's layer: it tilts with the meter
        _occlude(draw, rng, box)
    photo = _background(rng, (width, height), False)
    photo.alpha_composite(_steep_warp(layer, rng))
    # light and dirt at the final size: smooth fields, and noise that no resize averages away
    image = photo.convert("RGB").resize(spec.size, Image.Resampling.LANCZOS)
    image = _shifted_light(image, rng)
    if rng.random() < P_DIRT:
        image = _dirty_glass(image, rng)
    return _degrade(image, rng)


def _draw_dot_matrix(
    draw: ImageDraw.ImageDraw, rng: random.Random, spec: MeterSpec, box: tuple[int, int, int, int]
) -> None:
    """Digits as 5x7 dots (round or square), the unlit dots faintly visible as on a real panel."""
    background, lit = DISPLAYS[spec.display]
    ghost = tuple((3 * b + c) // 4 for b, c in zip(background, lit, strict=True))
    band = _band(box, rng)
    draw.rectangle(band, fill=background, outline=(20, 20, 20), width=2)
    pad = (band[3] - band[1]) * 0.14
    cell = (band[2] - band[0] - 2 * pad) / len(spec.digits)
    dot = min(cell * 0.8 / 5, (band[3] - band[1] - 2 * pad) / 7)
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    y0 = (band[1] + band[3] - 7 * dot) / 2
    for n, digit in enumerate(spec.digits):
        x0 = band[0] + pad + n * cell + (cell - 5 * dot) / 2
        for row, bits in enumerate(_DOT_FONT[digit]):
            for column, bit in enumerate(bits):
                x, y = x0 + column * dot, y0 + row * dot
                xy = (x + dot * 0.12, y + dot * 0.12, x + dot * 0.88, y + dot * 0.88)
                shape(xy, fill=lit if bit == "#" else ghost)


def _draw_hand_wheels(
    draw: ImageDraw.ImageDraw, rng: random.Random, spec: MeterSpec, box: tuple[int, int, int, int]
) -> None:
    """Number wheels in other colours, their digits pen strokes instead of a typeface."""
    band = _band(box, rng)
    draw.rectangle(band, fill=(18, 18, 18))
    # cream, aluminium, brown: the dark wheels are the hardest for the demo model, so rarer
    wheel_faces = ((236, 222, 190), (196, 198, 204), (70, 45, 32))
    face = rng.choices(wheel_faces, weights=(4, 3, 1))[0]
    ink = (30, 25, 20) if face[0] > 128 else (240, 230, 200)
    red_last = rng.random() < 0.35  # the fractional wheel, as many real registers have
    cell = (band[2] - band[0]) / len(spec.digits)
    height = band[3] - band[1]
    for n, digit in enumerate(spec.digits):
        if red_last and n == len(spec.digits) - 1:
            face, ink = (190, 40, 35), (245, 240, 230)
        x0 = band[0] + n * cell + max(1, cell * 0.08)
        x1 = band[0] + (n + 1) * cell - max(1, cell * 0.08)
        draw.rectangle((x0, band[1] + 2, x1, band[3] - 2), fill=face)
        shift = height * rng.uniform(-0.15, 0.15)  # wheels rest a little off-centre
        top, bottom = band[1] + height * 0.22 + shift, band[3] - height * 0.22 + shift
        _stroke_digit(draw, rng, digit, (x0 + cell * 0.15, top, x1 - cell * 0.15, bottom), ink)
        # the drum curves away at top and bottom
        draw.rectangle((x0, band[1] + 2, x1, band[1] + height * 0.15), fill=_shade(face))
        draw.rectangle((x0, band[3] - height * 0.15, x1, band[3] - 2), fill=_shade(face))


def _stroke_digit(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    digit: str,
    box: tuple[float, float, float, float],
    ink: tuple[int, int, int],
) -> None:
    """One digit as a wobbly pen stroke: each point of its path moved a little at random."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    points = [
        (x0 + (x + rng.uniform(-0.06, 0.06)) * w, y0 + (y + rng.uniform(-0.04, 0.04)) * h)
        for x, y in _STROKES[digit]
    ]
    draw.line(points, fill=ink, width=max(2, int(w * 0.16)), joint="curve")


def _draw_dial(
    draw: ImageDraw.ImageDraw, rng: random.Random, spec: MeterSpec, box: tuple[int, int, int, int]
) -> None:
    """A round dial of another make: coloured zones, dot ticks, a tapered needle."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    radius = (box[2] - box[0]) / 2 * rng.uniform(0.72, 0.84)
    face = rng.choice(((250, 250, 250), (222, 232, 244), (236, 214, 160)))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=face)
    ring = radius * 0.86
    zones = ((-135, 45, (60, 170, 70)), (45, 90, (240, 190, 30)), (90, 135, (210, 40, 40)))
    for start, end, rgb in zones:  # PIL's arc: 0 = 3 o'clock; ours: 0 = straight up
        arc_box = (cx - ring, cy - ring, cx + ring, cy + ring)
        draw.arc(arc_box, start - 90, end - 90, fill=rgb, width=max(2, int(radius * 0.1)))
    for step in range(11):
        angle = math.radians(-135 + step * 27)
        x, y = cx + math.sin(angle) * radius * 0.68, cy - math.cos(angle) * radius * 0.68
        r = radius * 0.045
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(30, 30, 30))
    needle = rng.choice(((20, 20, 20), (200, 30, 30), (30, 60, 160)))
    angle = math.radians(spec.needle_angle)
    sx, sy, half = math.sin(angle), -math.cos(angle), radius * 0.06
    tip = (cx + sx * radius * 0.8, cy + sy * radius * 0.8)
    tail = (cx - sx * radius * 0.15, cy - sy * radius * 0.15)
    base = [(tail[0] - sy * half, tail[1] + sx * half), (tail[0] + sy * half, tail[1] - sx * half)]
    draw.polygon([tip, *base], fill=needle)
    cap = radius * 0.07
    draw.ellipse((cx - cap, cy - cap, cx + cap, cy + cap), fill=needle)


def _occlude(draw: ImageDraw.ImageDraw, rng: random.Random, box: tuple[int, int, int, int]) -> None:
    """An opaque object over 10-30 % of the meter, entering from one side: a finger, a pipe
    or a paper tag. Never all of it, so the meter type stays recognisable."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    share = rng.uniform(0.10, 0.30)  # of the housing box's area
    kind = rng.choice(("finger", "pipe", "tag"))
    fill = {"finger": (214, 168, 140), "pipe": (120, 124, 128), "tag": (238, 232, 210)}[kind]
    along = 1.0 if kind == "pipe" else rng.uniform(max(0.35, share), 0.8)  # of the side
    depth = share / along  # of the other dimension
    side = rng.choice(("left", "right", "top", "bottom"))
    if side in ("left", "right"):
        y0 = top + (h - along * h) * rng.uniform(0, 1)
        x0 = left if side == "left" else right - depth * w
        xy = (x0, y0, x0 + depth * w, y0 + along * h)
    else:
        x0 = left + (w - along * w) * rng.uniform(0, 1)
        y0 = top if side == "top" else bottom - depth * h
        xy = (x0, y0, x0 + along * w, y0 + depth * h)
    radius = int(min(xy[2] - xy[0], xy[3] - xy[1]) * (0.45 if kind == "finger" else 0.05))
    draw.rounded_rectangle(xy, radius, fill=(*_jitter(rng, fill, 12), 255))


def _steep_warp(layer: Image.Image, rng: random.Random) -> Image.Image:
    """Shot from the side: a larger rotation and one edge pulled in far more than _warp's
    8 %, the meter shrinking (not cut off) towards that edge."""
    layer = layer.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC)
    width, height = layer.size
    d = rng.uniform(0.12, 0.25)
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    side = rng.choice(((0, 3), (1, 2), (0, 1), (2, 3)))  # this edge's corners: left, right, ...
    vertical = side in ((0, 3), (1, 2))  # a left / right edge: its corners move up / down
    moved: list[tuple[float, float]] = []
    for i, (x, y) in enumerate(corners):
        # the edge's source corners pushed outwards: that edge shows more, smaller
        push = d if i in side else 0.0
        dx = 0.0 if vertical else (1 if x else -1) * push * width
        dy = (1 if y else -1) * push * height if vertical else 0.0
        moved.append((x + dx + rng.uniform(-0.04, 0.04) * width, y + dy))
    return layer.transform(
        layer.size,
        Image.Transform.PERSPECTIVE,
        _perspective(moved, corners),
        Image.Resampling.BICUBIC,
    )


def _shifted_light(image: Image.Image, rng: random.Random) -> Image.Image:
    kind = rng.choices(tuple(LIGHTS), weights=tuple(LIGHTS.values()))[0]
    if kind == "night":
        return _night(image, rng)
    if kind == "flash":
        return _flash(image, rng)
    return _light_and_glare(image, rng)


def _night(image: Image.Image, rng: random.Random) -> Image.Image:
    """Dark: low gain, a blue cast (street lamp, phone night mode), heavy sensor noise."""
    array: np.ndarray = np.asarray(image, dtype=np.float32)
    cast = np.array([rng.uniform(0.85, 0.95), rng.uniform(0.92, 1.0), rng.uniform(1.04, 1.12)])
    array = array * rng.uniform(0.55, 0.8) * cast.astype(np.float32) + rng.uniform(2, 10)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    sigma = rng.uniform(3, 7)
    luma = np_rng.normal(0, sigma, (*array.shape[:2], 1))  # grain shared by the channels
    array = array + luma + np_rng.normal(0, sigma / 2, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _flash(image: Image.Image, rng: random.Random) -> Image.Image:
    """On-camera flash: a blown-out hotspot near the centre, the edges falling off to dark."""
    width, height = image.size
    array: np.ndarray = np.asarray(image, dtype=np.float32)
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :] - rng.uniform(-0.2, 0.2)
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None] - rng.uniform(-0.2, 0.2)
    r2 = xs**2 + ys**2
    spread = rng.uniform(0.25, 0.5)
    gain = rng.uniform(0.35, 0.55) + rng.uniform(0.7, 1.1) * np.exp(-r2 / spread)
    hotspot = rng.uniform(50, 130) * np.exp(-r2 / (spread * 0.12))
    array = array * gain[:, :, None] + hotspot[:, :, None]
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _dirty_glass(image: Image.Image, rng: random.Random) -> Image.Image:
    """Dirty glass in front: soft, semi-transparent brownish smudges and dust specks."""
    width, height = image.size
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(rng.randint(3, 8)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.25) * width, rng.uniform(0.05, 0.25) * height
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=rng.randint(90, 220))
    mask = mask.filter(ImageFilter.GaussianBlur(width * 0.05))
    alpha = np.asarray(mask, dtype=np.float32)[:, :, None] / 255 * rng.uniform(0.35, 0.7)
    dirt = np.array(_jitter(rng, (170, 155, 125), 25), dtype=np.float32)
    array = np.asarray(image, dtype=np.float32) * (1 - alpha) + dirt * alpha
    smudged = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    specks = ImageDraw.Draw(smudged)
    for _ in range(rng.randint(20, 120)):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.3, 1.2)
        specks.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randint(40, 230),) * 3)
    return smudged


_EN_DISPLAY = {
    "lcd": ("LCD", "grey-green LCD", "liquid crystal digits"),
    "led-red": ("red LED digits", "red LEDs", "glowing red digits"),
    "led-green": ("green LED digits", "green LEDs", "glowing green digits"),
    "led-amber": ("amber LED digits", "orange LEDs", "glowing amber digits"),
    "led-blue": ("blue LED digits", "blue LEDs", "glowing blue digits"),
}
_JA_DISPLAY = {
    "lcd": ("液晶表示", "液晶の数字"),
    "led-red": ("赤色LED表示", "赤いLEDの数字"),
    "led-green": ("緑色LED表示", "緑のLEDの数字"),
    "led-amber": ("橙色LED表示", "オレンジのLEDの数字"),
    "led-blue": ("青色LED表示", "青いLEDの数字"),
}
_JA_SIDE = {"left": "左", "right": "右"}


def captions(spec: MeterSpec, rng: random.Random, n: int) -> list[str]:
    """``n`` distinct captions (English and Japanese) of what ``render`` drew."""
    found: list[str] = []
    for _ in range(20 * n):
        text = _caption(spec, rng, japanese=rng.random() < 0.5)
        if text not in found:
            found.append(text)
        if len(found) == n:
            break
    return found


def _caption(spec: MeterSpec, rng: random.Random, japanese: bool) -> str:
    terms = [t for t in TYPE_TERMS[spec.meter_type] if t.isascii() != japanese]
    kind = rng.choice(terms)
    attributes = _ja_attributes(spec, rng) if japanese else _en_attributes(spec, rng)
    rng.shuffle(attributes)
    chosen = attributes[: rng.randint(0, len(attributes))]
    if japanese:
        prefix = rng.choice(("", "", "写真:", "検針写真、", "設置された"))
        return "、".join([prefix + kind, *chosen])
    prefix = rng.choice(("", "a ", "a photo of a ", "close-up of a ", "utility meter: "))
    return ", ".join([prefix + kind, *chosen])


def _en_attributes(spec: MeterSpec, rng: random.Random) -> list[str]:
    colour = spec.housing_colour
    found = [rng.choice((f"{colour} housing", f"in a {colour} case", f"{colour} casing"))]
    if spec.digits:
        found.append(
            rng.choice(
                (f"showing {spec.digits}", f"reading {spec.digits}", f"digits {spec.digits}")
            )
        )
    if spec.display:
        found.append(rng.choice(_EN_DISPLAY[spec.display]))
    if spec.needle_side:
        side = spec.needle_side
        found.append(
            rng.choice(
                (f"needle on the {side}", f"needle pointing {side}", f"pointer in the {side} half")
            )
        )
    return found


def _ja_attributes(spec: MeterSpec, rng: random.Random) -> list[str]:
    colour = _JA_COLOUR[spec.housing_colour]
    found = [rng.choice((f"{colour}筐体", f"{colour}ケース", f"{colour}本体"))]
    if spec.digits:
        found.append(
            rng.choice((f"表示は{spec.digits}", f"数字は{spec.digits}", f"指示値{spec.digits}"))
        )
    if spec.display:
        found.append(rng.choice(_JA_DISPLAY[spec.display]))
    if spec.needle_side:
        side = _JA_SIDE[spec.needle_side]
        found.append(rng.choice((f"針は{side}側", f"指針が{side}寄り", f"針が{side}半分")))
    return found


@dataclass(frozen=True)
class SyntheticSet:
    root: Path
    images_dir: Path
    captions_csv: Path  # tab-separated filepath / title (open_clip_train's columns)
    truth_csv: Path  # what each image shows
    count: int


TRUTH_COLUMNS = ("file", "meter_type", "housing_colour", "display", "digits", "needle_side")


def render_one(
    seed: int, index: int, captions_per_image: int, style: Style = "standard"
) -> tuple[str, bytes, list[str], MeterSpec]:
    """Image ``index`` of set ``seed`` in ``style``: (file name, encoded bytes, captions, spec).

    Both styles draw the spec from image_rng(seed, index), so image i shows the same meter
    in both; the shifted look and its captions then come from shifted_rng(seed, index)."""
    check_style(style)
    rng = image_rng(seed, index)
    spec = sample_spec(rng, METER_TYPES[index % len(METER_TYPES)])
    if style == "shifted":
        rng = shifted_rng(seed, index)
        image = render_shifted(spec, rng)
    else:  # the standard path draws exactly what it always drew (the demo model's data)
        image = render(spec, rng)
    buffer = io.BytesIO()
    if spec.jpeg_quality:
        image.save(buffer, "JPEG", quality=spec.jpeg_quality)
        name = f"{index:06d}.jpg"
    else:
        image.save(buffer, "PNG")
        name = f"{index:06d}.png"
    return name, buffer.getvalue(), captions(spec, rng, captions_per_image), spec


def _render_star(args: tuple[int, int, int, Style]) -> tuple[str, bytes, list[str], MeterSpec]:
    return render_one(*args)


def write_synthetic_set(
    out_dir: Path,
    count: int,
    seed: int,
    captions_per_image: int = 2,
    workers: int = 1,
    progress: bool = False,
    style: Style = "standard",
) -> SyntheticSet:
    """Render ``count`` meters in ``style`` into out_dir/images plus captions.csv and
    truth.csv (the same truth for both styles of one seed)."""
    check_style(style)  # before anything is written
    images = out_dir / "images"
    if images.is_dir() and any(images.iterdir()):
        # older renders would stay beside the new set, in no CSV but picked up by encode
        raise ConfigError(f"{images} is not empty: synth writes a whole set into a new folder")
    images.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, index, captions_per_image, style) for index in range(count)]
    captions_csv, truth_csv = out_dir / "captions.csv", out_dir / "truth.csv"
    with (
        captions_csv.open("w", encoding="utf-8", newline="") as cap_handle,
        truth_csv.open("w", encoding="utf-8", newline="") as truth_handle,
        # spawned, not forked: a fork after torch has started its thread pools (the demo
        # renders its shifted sets after encoding) can hang the children for good
        get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool,
    ):
        cap_writer = csv.writer(cap_handle, delimiter="\t", lineterminator="\n")
        cap_writer.writerow(["filepath", "title"])
        truth_writer = csv.writer(truth_handle, lineterminator="\n")
        truth_writer.writerow(TRUTH_COLUMNS)
        rendered = pool.imap(_render_star, jobs, chunksize=16)
        for name, data, texts, spec in tqdm(
            rendered, total=count, disable=not progress, desc="render"
        ):
            (images / name).write_bytes(data)
            cap_writer.writerows([str((images / name).resolve()), text] for text in texts)
            truth_writer.writerow(
                [
                    name,
                    spec.meter_type,
                    spec.housing_colour,
                    spec.display,
                    spec.digits,
                    spec.needle_side,
                ]
            )
    return SyntheticSet(out_dir, images, captions_csv, truth_csv, count)


class _Serial:
    """Pool's imap in this process (workers=1)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, fn, items, chunksize: int = 1):  # type: ignore[no-untyped-def]
        return map(fn, items)
