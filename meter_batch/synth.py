"""Procedural renders of utility-meter photos, with captions, for training a tiny CLIP.

Three meter types are drawn with Pillow and numpy only: a digital 7-segment display, a
rotary (number-wheel) counter and a round analog gauge, each in a housing of one of four
colours. Backgrounds, placement, lighting, warp, blur, noise, glare and JPEG quality vary
so a model trained on the renders generalises, while the structure that tells the types
apart (segment display, drum window, round dial with needle) stays large enough to read
at 64 px. Every caption (English or Japanese) describes only what was drawn.

Image i of a set depends only on ``(seed, i)`` via :func:`image_rng`, so a longer set
extends a shorter one and a held-out set is just another seed.
"""

from __future__ import annotations

import colorsys
import csv
import functools
import io
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]

METER_TYPES: tuple[str, ...] = ("digital", "rotary", "analog")
HOUSING_RGB: dict[str, RGB] = {
    "white": (236, 236, 230),
    "black": (30, 30, 33),
    "grey": (128, 131, 135),
    "blue": (34, 82, 176),
}
HOUSING_COLOURS: tuple[str, ...] = tuple(HOUSING_RGB)
# Held out of every caption so the evaluation's label phrasings are genuinely unseen text.
HELD_OUT_PHRASES: tuple[str, ...] = (
    "electronic number readout",
    "mechanical counter wheels",
    "circular dial with a pointer",
    "meter body is",
)
DISPLAYS: dict[str, tuple[RGB, RGB]] = {  # name -> (display background, lit segment)
    "lcd": ((150, 168, 138), (26, 34, 28)),
    "led-red": ((20, 12, 12), (255, 45, 35)),
    "led-green": ((10, 20, 12), (60, 245, 95)),
    "led-amber": ((22, 15, 8), (255, 176, 24)),
    "led-blue": ((8, 12, 24), (80, 160, 255)),
}
WHEELS: dict[str, tuple[RGB, RGB]] = {  # wheel colour -> (drum, printed digit)
    "white": ((242, 242, 236), (20, 20, 20)),
    "black": ((26, 26, 26), (240, 240, 240)),
    "red": ((205, 30, 30), (250, 250, 250)),
}
FACES: dict[str, RGB] = {"white": (246, 246, 242), "cream": (236, 226, 196), "black": (22, 22, 24)}
NEEDLES: dict[str, RGB] = {"red": (215, 25, 25), "black": (15, 15, 15), "orange": (255, 140, 0)}
SEGMENTS = {  # digit -> lit segments: a top, b top-right, c bottom-right, d bottom, e, f, g
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
BACKGROUNDS = ("solid", "gradient", "noise", "stripes", "bricks", "clutter")
ASPECTS = ((4, 3), (3, 4), (16, 9), (9, 16), (1, 1), (3, 2), (2, 3))
UNITS = ("", "", "kWh", "m3", "MWh", "L")


@dataclass(frozen=True)
class MeterSpec:
    """Everything that is drawn and described: render and captions read only this."""

    meter_type: str
    housing_colour: str
    digits: str  # digits shown (digital/rotary); "" for analog
    display: str  # key of DISPLAYS for digital; "" otherwise
    needle_side: str  # "left"/"right": half of the dial holding the needle tip (analog)
    needle_angle: float  # degrees clockwise from straight up (analog), 0 otherwise
    width: int
    height: int
    shape: str  # housing: "rect", "rounded" or "circle"
    housing_rgb: RGB  # the housing colour, lightly jittered per image
    meter_frac: float  # housing's long side as a share of the image's short side
    housing_aspect: float  # housing width / height
    offset: tuple[float, float]  # centre offset, as a share of the free room (-1..1)
    slant: float = 0.0  # 7-segment italic shear
    decimal: int = -1  # digital: decimal point after this digit, -1 for none
    unit: str = ""  # unit text printed on the housing
    wheel: str = ""  # rotary drum colour: "white" or "black"
    red_last: bool = False  # rotary: last wheel red
    roll: float = 0.0  # rotary: last wheel rolled by this share of a cell
    face: str = ""  # analog dial face colour (key of FACES)
    needle: str = ""  # analog needle colour (key of NEEDLES)
    red_zone: bool = False  # analog: red arc at the top of the scale
    background: str = "solid"
    bg_rgb: RGB = (90, 110, 90)
    bg_rgb2: RGB = (60, 70, 60)
    rotation: float = 0.0
    perspective: float = 0.0
    shadow: bool = False
    light: float = 0.0  # strength of the brightness gradient
    light_angle: float = 0.0
    gain: float = 1.0
    contrast: float = 1.0
    blur: float = 0.0
    noise: float = 0.0
    glare: bool = False
    jpeg_quality: int = 90
    fmt: str = "jpg"


def image_rng(seed: int, index: int) -> random.Random:
    """Per-image stream: image i of set `seed` never depends on any other image."""
    return random.Random(f"meter:{seed}:{index}")


def _far_colour(rng: random.Random, avoid: RGB, min_dist: float = 90.0) -> RGB:
    """A scene colour (mostly muted, like walls and cabinets) clearly unlike the housing."""
    while True:
        sat = rng.random() ** 2 * 0.85
        r, g, b = colorsys.hsv_to_rgb(rng.random(), sat, rng.uniform(0.15, 0.95))
        c = (int(r * 255), int(g * 255), int(b * 255))
        if math.dist(c, avoid) >= min_dist:
            return c


def _jitter(rgb: RGB, rng: random.Random, amount: int) -> RGB:
    """Small per-image colour drift, so one exact RGB is not the only cue."""
    r, g, b = (min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)
    return (r, g, b)


def _type_fields(rng: random.Random, meter_type: str) -> dict[str, object]:
    """The type-specific part of a spec: digits, display, wheels, or dial and needle."""
    if meter_type == "digital":
        n = rng.randint(4, 8)
        return {
            "digits": "".join(rng.choice("0123456789") for _ in range(n)),
            "display": rng.choice(("lcd", "lcd", "led-red", "led-green", "led-amber", "led-blue")),
            "slant": rng.choice((0.0, 0.0, rng.uniform(0.05, 0.18))),
            "decimal": rng.choice((-1, -1, rng.randint(0, n - 2))),
            "unit": rng.choice(UNITS),
            "housing_aspect": rng.uniform(1.25, 1.8),
        }
    if meter_type == "rotary":
        n = rng.randint(4, 8)
        return {
            "digits": "".join(rng.choice("0123456789") for _ in range(n)),
            "wheel": rng.choice(("white", "white", "black")),
            "red_last": rng.random() < 0.35,
            "roll": rng.uniform(0.15, 0.35) if rng.random() < 0.35 else 0.0,
            "unit": rng.choice(UNITS),
            "housing_aspect": rng.uniform(1.3, 1.9),
        }
    angle = rng.uniform(15.0, 135.0) * rng.choice((-1, 1))
    face = rng.choice(("white", "white", "cream", "black"))
    return {
        "needle_angle": angle,
        "needle_side": "left" if angle < 0 else "right",
        "face": face,
        "needle": rng.choice(("red", "orange") if face == "black" else ("red", "black")),
        "red_zone": rng.random() < 0.4,
        "housing_aspect": rng.uniform(0.9, 1.15),
    }


def _camera_fields(rng: random.Random) -> dict[str, object]:
    """Frame, lighting, optics and encoding: the photo around the meter."""
    aw, ah = rng.choice(ASPECTS)
    long_side = rng.randint(96, 256)
    w, h = (long_side, round(long_side * ah / aw)) if aw >= ah else (
        round(long_side * aw / ah), long_side)
    return {
        "width": w,
        "height": h,
        "offset": (rng.uniform(-1, 1), rng.uniform(-1, 1)),
        "background": rng.choice(BACKGROUNDS),
        "rotation": rng.gauss(0, 5) if rng.random() < 0.7 else 0.0,
        "perspective": rng.uniform(0, 0.12) if rng.random() < 0.6 else 0.0,
        "shadow": rng.random() < 0.5,
        "light": rng.uniform(0, 0.35),
        "light_angle": rng.uniform(0, 2 * math.pi),
        "gain": rng.uniform(0.8, 1.15),
        "contrast": rng.uniform(0.8, 1.2),
        "blur": rng.choice((0.0, rng.uniform(0.3, 1.5))),
        "noise": rng.choice((0.0, rng.uniform(1, 9))),
        "glare": rng.random() < 0.3,
        "jpeg_quality": rng.randint(40, 95),
        "fmt": "png" if rng.random() < 0.15 else "jpg",
    }


def sample_spec(rng: random.Random, meter_type: str | None = None) -> MeterSpec:
    """Draw one meter and its photo: type-specific details, housing, camera and encoding."""
    meter_type = meter_type or rng.choice(METER_TYPES)
    fields = _type_fields(rng, meter_type)
    colour = rng.choice(HOUSING_COLOURS)
    housing_rgb = _jitter(HOUSING_RGB[colour], rng, 10)
    shapes = ("circle", "circle", "rounded", "rect") if meter_type == "analog" else (
        "rect", "rounded")
    bg = _far_colour(rng, housing_rgb)
    return MeterSpec(
        meter_type=meter_type,
        housing_colour=colour,
        digits=str(fields.pop("digits", "")),
        display=str(fields.pop("display", "")),
        needle_side=str(fields.pop("needle_side", "")),
        needle_angle=float(fields.pop("needle_angle", 0.0)),  # type: ignore[arg-type]
        shape=rng.choice(shapes),
        housing_rgb=housing_rgb,
        meter_frac=rng.triangular(0.4, 0.92, 0.7),
        bg_rgb=bg,
        bg_rgb2=_far_colour(rng, housing_rgb),
        **fields,  # type: ignore[arg-type]
        **_camera_fields(rng),  # type: ignore[arg-type]
    )


class Layout(NamedTuple):
    """Where things sit: the housing box on the canvas, the rest in housing-local pixels."""

    box: tuple[int, int, int, int]  # housing on the canvas (unwarped)
    window: Box  # digital display / rotary window; (0, 0, 0, 0) for analog
    cells: tuple[Box, ...]  # digit boxes (digital) or wheel cells (rotary)
    dial: tuple[float, float, float]  # analog dial centre x, y and radius
    housing_point: tuple[float, float]  # a point that shows only the housing colour


def _housing_size(spec: MeterSpec) -> tuple[int, int]:
    """Housing pixels: long side = meter_frac of the image's short side."""
    long_side = spec.meter_frac * min(spec.width, spec.height)
    if spec.shape == "circle":
        return round(long_side), round(long_side)
    if spec.housing_aspect >= 1:
        return round(long_side), round(long_side / spec.housing_aspect)
    return round(long_side * spec.housing_aspect), round(long_side)


def _digital_geometry(spec: MeterSpec, mw: int, mh: int) -> tuple[Box, tuple[Box, ...]]:
    """Display window and digit boxes: digits as large as the housing allows."""
    n = len(spec.digits)
    ww = 0.84 * mw
    pitch = ww * 0.9 / n
    dw = 0.74 * pitch
    dh = min(1.9 * dw, 0.5 * mh)
    wh = dh * 1.4
    x0, y0 = (mw - ww) / 2, (mh - wh) / 2 - (0.07 * mh if spec.unit else 0.0)
    left, top = x0 + ww * 0.05 + (pitch - dw) / 2, y0 + (wh - dh) / 2
    cells = tuple((left + i * pitch, top, left + i * pitch + dw, top + dh) for i in range(n))
    return (x0, y0, x0 + ww, y0 + wh), cells


def _rotary_geometry(spec: MeterSpec, mw: int, mh: int) -> tuple[Box, tuple[Box, ...]]:
    """Counter window and one cell per number wheel, side by side."""
    n = len(spec.digits)
    ww = 0.84 * mw
    cw = ww / n
    ch = min(1.5 * cw, 0.58 * mh)
    border = max(1.0, 0.06 * ch)
    x0, y0 = (mw - ww) / 2, (mh - ch) / 2 - (0.07 * mh if spec.unit else 0.0)
    cells = tuple((x0 + i * cw, y0, x0 + (i + 1) * cw, y0 + ch) for i in range(n))
    return (x0 - border, y0 - border, x0 + ww + border, y0 + ch + border), cells


def layout(spec: MeterSpec, clean: bool = False) -> Layout:
    """Geometry shared by the renderer and the tests that check what was drawn."""
    mw, mh = _housing_size(spec)
    short = min(spec.width, spec.height)
    room_x = max(0.0, (short - mw) / 2 * 0.85)  # stays inside a centre crop of the short side
    room_y = max(0.0, (short - mh) / 2 * 0.85)
    dx, dy = (0.0, 0.0) if clean else (spec.offset[0] * room_x, spec.offset[1] * room_y)
    x0 = round((spec.width - mw) / 2 + dx)
    y0 = round((spec.height - mh) / 2 + dy)
    box = (x0, y0, x0 + mw, y0 + mh)
    if spec.meter_type == "analog":
        r = 0.38 * min(mw, mh)
        point = (mw / 2, (mh / 2 - r * 1.08) / 2 + 0.5) if spec.shape == "circle" else (
            (mw / 2 - r * 1.08) / 2, mh / 2)
        return Layout(box, (0, 0, 0, 0), (), (mw / 2, mh / 2, r), point)
    geometry = _digital_geometry if spec.meter_type == "digital" else _rotary_geometry
    window, cells = geometry(spec, mw, mh)
    return Layout(box, window, cells, (0, 0, 0), (window[0] / 2, (window[1] + window[3]) / 2))


SS = 2  # the meter is drawn at this supersampling factor, then reduced: smooth edges


def _s(values: Sequence[float]) -> list[float]:
    """Housing-local coordinates to supersampled layer coordinates."""
    return [v * SS for v in values]


def _contrast_ink(rgb: RGB) -> RGB:
    """Dark ink on light surfaces, light ink on dark ones (labels, bezels)."""
    return (25, 25, 25) if sum(rgb) > 330 else (225, 225, 225)


def _bezel(rgb: RGB) -> RGB:
    """A frame colour that stands apart from the housing colour."""
    return (62, 62, 66) if sum(rgb) > 420 else (188, 188, 194)


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at a size; cached because loading costs more than drawing."""
    return ImageFont.load_default(size=max(6, size))


@functools.lru_cache(maxsize=4096)
def _glyph(digit: str, w: int, h: int) -> Image.Image:
    """A printed digit as an L mask filling (w, h): the number-wheel lettering."""
    big = Image.new("L", (48, 64), 0)
    ImageDraw.Draw(big).text((24, 32), digit, fill=255, font=_font(60), anchor="mm")
    bbox = big.getbbox() or (0, 0, 48, 64)
    return big.crop(bbox).resize((max(1, w), max(1, h)), Image.Resampling.BILINEAR)


def _draw_housing(spec: MeterSpec, mw: int, mh: int) -> Image.Image:
    """The meter body: one flat colour, a thin darker rim, in the spec's shape."""
    layer = Image.new("RGBA", (mw * SS, mh * SS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    rim = tuple(int(v * 0.7) for v in spec.housing_rgb) + (255,)
    box = (0, 0, mw * SS - 1, mh * SS - 1)
    width = max(1, SS)
    if spec.shape == "circle":
        draw.ellipse(box, fill=(*spec.housing_rgb, 255), outline=rim, width=width)
    elif spec.shape == "rounded":
        radius = int(0.14 * min(mw, mh) * SS)
        draw.rounded_rectangle(box, radius, fill=(*spec.housing_rgb, 255), outline=rim, width=width)
    else:
        draw.rectangle(box, fill=(*spec.housing_rgb, 255), outline=rim, width=width)
    return layer


def _unit_label(draw: ImageDraw.ImageDraw, spec: MeterSpec, window: Box, mh: int) -> None:
    """Small unit text under the window, as printed on real meter faces."""
    if not spec.unit:
        return
    size = int(0.11 * mh * SS)
    x, y = window[2] * SS, (window[3] + 0.04 * mh) * SS
    draw.text((x, y), spec.unit, fill=_contrast_ink(spec.housing_rgb), font=_font(size), anchor="ra")


def _segment_polygons(box: Box, slant: float) -> dict[str, list[tuple[float, float]]]:
    """The seven hexagonal segments of one digit cell, sheared by `slant` (italic)."""
    x0, y0, x1, y1 = box
    t = 0.2 * (x1 - x0)
    g = 0.12 * t
    ym = (y0 + y1) / 2

    def hseg(yc: float) -> list[tuple[float, float]]:
        a, b = x0 + t / 2 + g, x1 - t / 2 - g
        h = t / 2
        return [(a, yc), (a + h, yc - h), (b - h, yc - h), (b, yc), (b - h, yc + h), (a + h, yc + h)]

    def vseg(xc: float, a: float, b: float) -> list[tuple[float, float]]:
        h = t / 2
        return [(xc, a), (xc + h, a + h), (xc + h, b - h), (xc, b), (xc - h, b - h), (xc - h, a + h)]

    xl, xr = x0 + t / 2, x1 - t / 2
    raw = {
        "a": hseg(y0 + t / 2),
        "g": hseg(ym),
        "d": hseg(y1 - t / 2),
        "f": vseg(xl, y0 + t / 2 + g, ym - g),
        "b": vseg(xr, y0 + t / 2 + g, ym - g),
        "e": vseg(xl, ym + g, y1 - t / 2 - g),
        "c": vseg(xr, ym + g, y1 - t / 2 - g),
    }
    return {k: [(x + (y1 - y) * slant, y) for x, y in pts] for k, pts in raw.items()}


def _draw_digital(layer: Image.Image, spec: MeterSpec, geo: Layout) -> None:
    """A 7-segment display: bezel, display glass, unlit ghost segments, lit digits."""
    draw = ImageDraw.Draw(layer)
    bg, lit = DISPLAYS[spec.display]
    x0, y0, x1, y1 = geo.window
    pad = 0.035 * (y1 - y0) + 1
    draw.rectangle(_s((x0 - pad, y0 - pad, x1 + pad, y1 + pad)), fill=_bezel(spec.housing_rgb))
    draw.rectangle(_s(geo.window), fill=bg)
    ghost = tuple(int(b * 0.86 + 2) for b in bg) if spec.display == "lcd" else tuple(
        int(b * 0.8 + c * 0.12) for b, c in zip(bg, lit, strict=True))
    for i, (digit, cell) in enumerate(zip(spec.digits, geo.cells, strict=True)):
        polys = _segment_polygons(cell, spec.slant)
        for name, pts in polys.items():
            colour = lit if name in SEGMENTS[digit] else ghost
            draw.polygon([(x * SS, y * SS) for x, y in pts], fill=colour)
        if i == spec.decimal:
            dot = 0.16 * (cell[2] - cell[0])
            cx, cy = cell[2] + dot * 0.9, cell[3] - dot / 2
            draw.rectangle(_s((cx - dot / 2, cy - dot / 2, cx + dot / 2, cy + dot / 2)), fill=lit)
    _unit_label(draw, spec, geo.window, layer.height // SS)


def _wheel_cell(digit: str, roll: float, colour: str, w: int, h: int) -> Image.Image:
    """One drum: its digit, rolled up by `roll` of a cell with the next digit coming in."""
    drum, ink = WHEELS[colour]
    cell = Image.new("RGB", (w, h), drum)
    gw, gh = int(w * 0.62), int(h * 0.66)
    x, y = (w - gw) // 2, (h - gh) // 2 - int(roll * h)
    cell.paste(ink, (x, y), _glyph(digit, gw, gh))
    if roll:
        cell.paste(ink, (x, y + h), _glyph(str((int(digit) + 1) % 10), gw, gh))
    return cell


@functools.lru_cache(maxsize=512)
def _drum_shade(w: int, h: int) -> Image.Image:
    """Darkening toward a drum's top and bottom: the wheels read as cylinders."""
    ys = np.linspace(0, math.pi, h, dtype=np.float32)
    profile = (150 * (1 - np.sin(ys)) ** 1.5).astype(np.uint8).reshape(h, 1)
    return Image.fromarray(np.repeat(profile, w, axis=1), "L")


def _draw_rotary(layer: Image.Image, spec: MeterSpec, geo: Layout) -> None:
    """A counter window of number wheels with thin separators and drum shading."""
    draw = ImageDraw.Draw(layer)
    draw.rectangle(_s(geo.window), fill=(18, 18, 20) if spec.wheel == "white" else (140, 140, 146))
    n = len(geo.cells)
    sep = max(1, round(0.07 * (geo.cells[0][2] - geo.cells[0][0]) * SS))
    for i, (digit, cell) in enumerate(zip(spec.digits, geo.cells, strict=True)):
        colour = "red" if spec.red_last and i == n - 1 else spec.wheel
        roll = spec.roll if i == n - 1 else 0.0
        x0, y0, x1, y1 = (round(v) for v in _s(cell))
        layer.paste(_wheel_cell(digit, roll, colour, x1 - x0 - sep, y1 - y0), (x0 + sep // 2, y0))
    x0, y0, x1, y1 = (round(v) for v in _s(geo.cells[0][:2] + geo.cells[-1][2:]))
    layer.paste((0, 0, 0, 255), (x0, y0), _drum_shade(x1 - x0, y1 - y0))
    _unit_label(draw, spec, geo.window, layer.height // SS)


def _polar(cx: float, cy: float, radius: float, angle: float) -> tuple[float, float]:
    """Point at `angle` degrees clockwise from straight up (image y grows downward)."""
    a = math.radians(angle)
    return cx + radius * math.sin(a), cy - radius * math.cos(a)


def _draw_scale(draw: ImageDraw.ImageDraw, spec: MeterSpec, dial: tuple[float, float, float],
                rng: random.Random) -> None:
    """Ticks over a 270-degree arc with numbers at the major ticks, optional red zone."""
    cx, cy, r = (v * SS for v in dial)
    ink = _contrast_ink(FACES[spec.face])
    if spec.red_zone:
        box = (cx - 0.9 * r, cy - 0.9 * r, cx + 0.9 * r, cy + 0.9 * r)
        draw.arc(box, 90 - 90, 135 - 90, fill=(220, 30, 30), width=max(2, int(0.1 * r)))
    majors, minors, step = rng.randint(4, 10), rng.choice((1, 2, 4, 5)), rng.choice((1, 2, 5, 10))
    font = _font(int(0.17 * r)) if r > 30 * SS / 2 else None
    for k in range(majors * minors + 1):
        angle = -135 + 270 * k / (majors * minors)
        major = k % minors == 0
        inner = 0.8 if major else 0.87
        width = max(1, int(r * (0.035 if major else 0.018)))
        draw.line([_polar(cx, cy, inner * r, angle), _polar(cx, cy, 0.96 * r, angle)], ink, width)
        if major and font is not None:
            label = str(k // minors * step)
            draw.text(_polar(cx, cy, 0.64 * r, angle), label, fill=ink, font=font, anchor="mm")


def _draw_analog(layer: Image.Image, spec: MeterSpec, geo: Layout, rng: random.Random) -> None:
    """A round gauge: bezel, face, scale, needle from the centre, centre cap."""
    draw = ImageDraw.Draw(layer)
    cx, cy, r = geo.dial
    for radius, colour in ((1.08 * r, _bezel(spec.housing_rgb)), (r, FACES[spec.face])):
        draw.ellipse(_s((cx - radius, cy - radius, cx + radius, cy + radius)), fill=colour)
    _draw_scale(draw, spec, geo.dial, rng)
    a = spec.needle_angle
    base = 0.05 * r
    pts = [
        _polar(cx, cy, 0.88 * r, a),
        _polar(cx, cy, base, a + 90),
        _polar(cx, cy, 0.16 * r, a + 180),
        _polar(cx, cy, base, a - 90),
    ]
    draw.polygon([(x * SS, y * SS) for x, y in pts], fill=NEEDLES[spec.needle])
    cap = 0.1 * r
    draw.ellipse(_s((cx - cap, cy - cap, cx + cap, cy + cap)), fill=(40, 40, 44))
    if spec.unit:
        size = int(0.13 * r * SS)
        ink = _contrast_ink(FACES[spec.face])
        draw.text(((cx) * SS, (cy + 0.45 * r) * SS), spec.unit, fill=ink, font=_font(size),
                  anchor="mm")


def draw_meter(spec: MeterSpec, rng: random.Random) -> tuple[Image.Image, Layout]:
    """The meter alone on a transparent RGBA layer of the housing's size (unwarped)."""
    geo = layout(spec)
    mw, mh = geo.box[2] - geo.box[0], geo.box[3] - geo.box[1]
    layer = _draw_housing(spec, mw, mh)
    if spec.meter_type == "digital":
        _draw_digital(layer, spec, geo)
    elif spec.meter_type == "rotary":
        _draw_rotary(layer, spec, geo)
    else:
        _draw_analog(layer, spec, geo, rng)
    return layer.reduce(SS), geo


def _mix(a: RGB, b: RGB, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours by weights t (H, W) in 0..1: an (H, W, 3) float array."""
    ca, cb = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return ca + (cb - ca) * t[..., None]


def _pattern(kind: str, w: int, h: int, nrng: np.random.Generator, rng: random.Random
             ) -> np.ndarray:
    """Weights (H, W) between the two background colours: gradient, noise, stripes, bricks."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "noise":
        small = Image.fromarray((nrng.random((rng.randint(3, 9),) * 2) * 255).astype(np.uint8))
        t = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255
        return np.clip(t + nrng.normal(0, 0.06, (h, w)).astype(np.float32), 0, 1)
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == "stripes":
        return ((u // rng.uniform(4, 24)) % 2).astype(np.float32)
    if kind == "bricks":
        bh, bw, m = rng.uniform(8, 22), rng.uniform(18, 48), rng.choice((1, 2))
        shift = (ys // bh) % 2 * bw / 2
        return (((ys % bh) < m) | (((xs + shift) % bw) < m)).astype(np.float32)
    return (u - u.min()) / max(1.0, float(u.max() - u.min()))


def _background(spec: MeterSpec, rng: random.Random, clean: bool) -> Image.Image:
    """The scene behind the meter; never the housing's own colour."""
    size = (spec.width, spec.height)
    if clean or spec.background == "solid":
        return Image.new("RGB", size, spec.bg_rgb)
    nrng = np.random.default_rng(rng.getrandbits(64))
    kind = "gradient" if spec.background == "clutter" else spec.background
    t = _pattern(kind, spec.width, spec.height, nrng, rng)
    image = Image.fromarray(_mix(spec.bg_rgb, spec.bg_rgb2, t).astype(np.uint8), "RGB")
    if spec.background == "clutter":
        _clutter(image, spec, rng)
    return image


def _clutter(image: Image.Image, spec: MeterSpec, rng: random.Random) -> None:
    """Random shapes (pipes, boxes, labels) so the meter is not alone on a clean wall."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(rng.randint(3, 9)):
        colour = _far_colour(rng, spec.housing_rgb)
        x0, y0 = rng.uniform(-0.2, 1) * w, rng.uniform(-0.2, 1) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
        kind = rng.choice(("rect", "ellipse", "line"))
        if kind == "rect":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(2, 10))


def _perspective_coeffs(src: Sequence[tuple[float, float]],
                        dst: Sequence[tuple[float, float]]) -> list[float]:
    """PERSPECTIVE data mapping output points `dst` back to input points `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return [float(c) for c in np.linalg.solve(np.array(rows), np.array(rhs))]


def _warp(layer: Image.Image, spec: MeterSpec, rng: random.Random) -> tuple[Image.Image, int, int]:
    """Rotate and tilt the meter layer; returns it with the shift of its top-left corner."""
    w, h = layer.size
    src = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    a, p = math.radians(spec.rotation), spec.perspective * max(w, h)
    dst = []
    for x, y in src:
        dx, dy = x - w / 2, y - h / 2
        dst.append((w / 2 + dx * math.cos(a) - dy * math.sin(a) + rng.uniform(-p, p),
                    h / 2 + dx * math.sin(a) + dy * math.cos(a) + rng.uniform(-p, p)))
    x0, y0 = math.floor(min(x for x, _ in dst)), math.floor(min(y for _, y in dst))
    x1, y1 = math.ceil(max(x for x, _ in dst)), math.ceil(max(y for _, y in dst))
    shifted = [(x - x0, y - y0) for x, y in dst]
    coeffs = _perspective_coeffs(src, shifted)
    out = layer.transform((x1 - x0, y1 - y0), Image.Transform.PERSPECTIVE, coeffs,
                          Image.Resampling.BILINEAR)
    return out, x0, y0


def _shadow(canvas: Image.Image, alpha: Image.Image, x: int, y: int, rng: random.Random) -> None:
    """A soft drop shadow below the meter, as cast by a light above the camera."""
    dark = alpha.point(lambda v: v * 45 // 100).filter(ImageFilter.BoxBlur(2))
    canvas.paste((0, 0, 0), (x + rng.randint(1, 5), y + rng.randint(2, 7)), dark)


def _glare_mask(size: tuple[int, int], rng: random.Random) -> np.ndarray:
    """A soft bright ellipse (0..1) as a reflection on glass would make."""
    w, h = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    rx, ry = rng.uniform(0.08, 0.3) * w, rng.uniform(0.04, 0.15) * h
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(rng.uniform(0.4, 0.8) * 255))
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, ry * 0.6)))
    return np.asarray(mask, np.float32) / 255


def _photo_effects(image: Image.Image, spec: MeterSpec, rng: random.Random) -> Image.Image:
    """Lighting gradient, exposure, contrast, glare, then blur and sensor noise."""
    w, h = image.size
    arr = np.asarray(image, np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs / w - 0.5) * math.cos(spec.light_angle) + (ys / h - 0.5) * math.sin(spec.light_angle)
    arr = ((arr - 128) * spec.contrast + 128) * (spec.gain * (1 + spec.light * u))[..., None]
    if spec.glare:
        glare = _glare_mask((w, h), rng)[..., None]
        arr = arr + glare * (255 - arr)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if spec.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(spec.blur))
    if spec.noise > 0:
        nrng = np.random.default_rng(rng.getrandbits(64))
        noisy = np.asarray(image, np.float32) + nrng.standard_normal((h, w, 1), np.float32) * (
            spec.noise)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    return image


def render(spec: MeterSpec, rng: random.Random, clean: bool = False) -> Image.Image:
    """The photo of `spec` as RGB. `clean` drops every camera effect and centres the meter,
    so tests can check pixels against the spec at the positions `layout(spec, True)` gives.
    """
    canvas = _background(spec, rng, clean)
    layer, geo = draw_meter(spec, rng)
    if clean:
        canvas.paste(layer, geo.box[:2], layer)
        return canvas
    x, y = geo.box[:2]
    if spec.rotation or spec.perspective:
        layer, dx, dy = _warp(layer, spec, rng)
        x, y = x + dx, y + dy
    if spec.shadow:
        _shadow(canvas, layer.getchannel("A"), x, y, rng)
    canvas.paste(layer, (x, y), layer)
    return _photo_effects(canvas, spec, rng)


# ---- captions -------------------------------------------------------------------------------

# Type phrases. The first Japanese entry of each type is the team's seed term; it is drawn
# more often than the variants (see _type_phrase).
TYPE_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "digital": {
        "en": ("digital meter", "7-segment display", "seven-segment display", "digital readout",
               "digital display meter", "segment display", "digital utility meter",
               "7-segment meter"),
        "ja": ("デジタルメーター(7セグ)", "7セグメント表示のデジタルメーター", "デジタル表示のメーター",
               "7セグ表示のメーター", "デジタル式メーター", "デジタルメーター"),
    },
    "rotary": {
        "en": ("rotary counter", "odometer-style number wheels", "drum counter", "rotary meter",
               "number-wheel counter", "roller counter", "odometer-type counter",
               "rotary register with number wheels", "cyclometer register"),
        "ja": ("回転式メーター", "数字車の回転式カウンター", "ドラム式カウンター", "回転式の積算計",
               "数字車式メーター", "回転ドラム式メーター"),
    },
    "analog": {
        "en": ("analog gauge", "round dial", "needle gauge", "analog meter", "analogue gauge",
               "dial gauge", "round analog meter", "needle-type meter", "analog dial meter"),
        "ja": ("アナログメーター丸型", "丸型のアナログ計器", "指針式メーター", "アナログ式の丸いメーター",
               "針式のアナログメーター", "丸型アナログメーター"),
    },
}
# Display-specific English type phrases (digital only).
DISPLAY_PHRASES = {"lcd": ("LCD readout", "LCD meter", "LCD display"),
                   "led": ("LED display", "LED meter", "LED readout")}
TYPE_TERMS: dict[str, tuple[str, ...]] = {
    t: v["en"] + v["ja"] + (sum(DISPLAY_PHRASES.values(), ()) if t == "digital" else ())
    for t, v in TYPE_PHRASES.items()
}
# Words that name a type; a caption never contains another type's keywords (English ones
# are matched as whole words, case-insensitive).
TYPE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "digital": ("digital", "segment", "LCD", "LED", "デジタル", "7セグ", "液晶"),
    "rotary": ("rotary", "counter", "wheel", "wheels", "drum", "drums", "odometer", "roller",
               "cyclometer", "回転", "数字車", "ドラム", "カウンター"),
    "analog": ("analog", "analogue", "gauge", "dial", "needle", "pointer", "アナログ", "指針", "針",
               "文字盤", "丸型"),
}
HOUSING_WORDS: dict[str, dict[str, tuple[str, ...]]] = {  # colour -> language -> adjectives
    "white": {"en": ("white",), "ja": ("白い", "白色の")},
    "black": {"en": ("black",), "ja": ("黒い", "黒色の")},
    "grey": {"en": ("grey", "gray"), "ja": ("グレーの", "灰色の")},
    "blue": {"en": ("blue",), "ja": ("青い", "青色の")},
}
HOUSING_NOUNS: dict[str, tuple[str, ...]] = {
    "en": ("housing", "case", "casing", "enclosure", "body", "cover"),
    "ja": ("筐体", "ケース", "本体", "ハウジング"),
}
LED_WORDS = {"red": ("red", "赤"), "green": ("green", "緑"), "amber": ("amber", "橙"),
             "blue": ("blue", "青")}
EN_PREFIXES = ("", "", "photo of ", "a photo of ", "close-up of ", "picture of ",
               "meter photo: ", "site photo, ", "utility meter, ", "reading photo of ")
EN_PLURAL = ("odometer-style number wheels",)
