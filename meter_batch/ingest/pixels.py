"""Correct pixels before the model sees them: what open_clip's `_convert_to_rgb` gets wrong.

Applied to every decoded image before open_clip's own resize / crop:
- EXIF orientation is applied (a phone photo taken upright embeds upright);
- CMYK / YCCK JPEGs go to RGB through their embedded ICC profile when they have one;
- 16-bit and 32-bit images are scaled to 8 bits instead of clipped to 255;
- transparency (RGBA, LA, PA, palette with a transparent colour) is composited on
  BACKGROUND instead of dropped onto whatever colour the hidden pixels held;
- animated images use their first frame (the frame count is recorded).
Plain RGB and L images pass through untouched, so they embed exactly like the reference.
The policy is recorded in every model identity (model.identity.PIXEL_POLICY): a change
here that changes any pixel bumps it, so a store never mixes two policies.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms, ImageOps

BACKGROUND = (255, 255, 255)  # white: the paper / wall colour transparent scans are shown on
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_SRGB = ImageCms.createProfile("sRGB")


def frame_count(image: Image.Image) -> int:
    return int(getattr(image, "n_frames", 1) or 1)


def normalize_image(image: Image.Image) -> Image.Image:
    """An RGB or L image whose pixels mean what the file means (see the module doc)."""
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in _SIXTEEN_BIT:
        return _scaled(np.asarray(image, dtype=np.float64), 65535.0)
    if mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0)  # full scale: the smallest 2^k - 1 that holds the data
        return _scaled(values, 65535.0 if top <= 65535 else 2.0 ** np.ceil(np.log2(top + 1)) - 1)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0)
        return _scaled(values, 1.0 if top <= 1.0 else 255.0 if top <= 255 else 65535.0)
    palette_mode = image.palette.mode if image.palette is not None else ""
    if mode == "P" and ("transparency" in image.info or palette_mode == "RGBA"):
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("L", "RGB") and "transparency" in image.info:
        return _composite(image)  # a tRNS colour key: that colour is transparent
    if mode in _ALPHA:
        return _composite(image)
    if mode in ("1", "P", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


def _scaled(values: np.ndarray, full_scale: float) -> Image.Image:
    scaled = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _composite(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to the plain conversion below
    return image.convert("RGB")
