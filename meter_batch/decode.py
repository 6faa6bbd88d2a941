"""File bytes -> uint8 pixels of the model's input size, or a failure record.

Runs inside DataLoader worker processes. Never raises for a bad file: every file
ends as a `Decoded` with pixels, or with a failure `kind` and the decoder's message.
The pixel stage is open_clip's own eval transform cut before ToTensor/Normalize,
so resize, crop and colour conversion are exactly the reference's; normalization
happens on the device (encode.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile
from torchvision import transforms as T

from meter_batch.errors import ModelError
from meter_batch.scan import WorkList
from meter_batch.schema import CONTENT_HASH_BYTES

PixelFn = Callable[[Image.Image], Image.Image]

DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class PixelStage:
    """The CPU half of open_clip's preprocess, plus the constants the device half needs."""

    transform: PixelFn
    mean: tuple[float, ...]
    std: tuple[float, ...]


def split_preprocess(preprocess: Any) -> PixelStage:
    """Cut open_clip's eval Compose at ToTensor: PIL steps stay, Normalize moves to the device."""
    steps = list(getattr(preprocess, "transforms", []))
    cut = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if cut is None or len(steps) != cut + 2 or not isinstance(steps[cut + 1], T.Normalize):
        raise ModelError(
            f"unsupported preprocess pipeline (expected ... ToTensor, Normalize): {steps}"
        )
    normalize = steps[cut + 1]
    return PixelStage(
        transform=T.Compose(steps[:cut]),
        mean=tuple(float(v) for v in normalize.mean),
        std=tuple(float(v) for v in normalize.std),
    )


@dataclass
class Decoded:
    """One file's outcome: ``pixels`` (H×W×3 uint8) or ``kind`` + ``message``."""

    index: int
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    content_hash: bytes = b""
    kind: str | None = None
    message: str = ""


def configure_decoder_process(in_worker: bool = True) -> None:
    """PIL settings for a process that decodes; warning filters are per process.

    In the main process (``workers=0``) only the truncation rule is set, so a library
    user's global PIL and torch settings stay theirs.
    """
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not embed grey
    if in_worker:
        Image.MAX_IMAGE_PIXELS = None  # our own cap (decode_file) runs first, from the header
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        torch.set_num_threads(1)


def worker_init(worker_id: int) -> None:
    configure_decoder_process(in_worker=True)


def decode_file(path: bytes, index: int, pixel_fn: PixelFn, max_pixels: int) -> Decoded:
    """Decode one file; every problem becomes a failure kind."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        return Decoded(index, kind="vanished", message=exc.strerror or str(exc))
    except PermissionError as exc:
        return Decoded(index, kind="permission_denied", message=exc.strerror or str(exc))
    except OSError as exc:
        return Decoded(index, kind="decode_error", message=f"read failed: {exc}")
    result = Decoded(index, content_hash=content_hash(data))
    try:
        _decode_into(result, data, pixel_fn, max_pixels)
    except Exception as exc:
        result.pixels = None
        result.kind, result.message = classify_decode_error(exc, data)
    return result


def _decode_into(result: Decoded, data: bytes, pixel_fn: PixelFn, max_pixels: int) -> None:
    with Image.open(io.BytesIO(data)) as image:
        result.width, result.height = image.size
        if image.width * image.height > max_pixels:
            result.kind = "too_large"
            result.message = f"{image.width}x{image.height} exceeds the {max_pixels}-pixel cap"
            return
        image.load()
        pixels = pixel_fn(image)
    result.pixels = np.asarray(pixels, dtype=np.uint8)


def classify_decode_error(exc: BaseException, data: bytes) -> tuple[str, str]:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, Image.UnidentifiedImageError):
        if not data:
            return "unidentified", "empty file (0 bytes)"
        return "unidentified", f"not an image format Pillow can read (starts with {data[:16]!r})"
    if isinstance(exc, Image.DecompressionBombError):
        return "too_large", message
    lowered = message.lower()
    if isinstance(exc, (OSError, SyntaxError)) and (
        "truncated" in lowered or "broken data stream" in lowered or "premature end" in lowered
    ):
        return "truncated", message
    return "decode_error", f"{type(exc).__name__}: {message}"


def content_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=CONTENT_HASH_BYTES).digest()


class ImageFiles(torch.utils.data.Dataset[Decoded]):
    """Map-style dataset over a WorkList; item i is file i of the scan."""

    def __init__(self, root: bytes, work: WorkList, pixel_fn: PixelFn, max_pixels: int) -> None:
        self.root, self.work = root, work
        self.pixel_fn, self.max_pixels = pixel_fn, max_pixels

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, index: int) -> Decoded:
        path = os.path.join(self.root, self.work.relpath(index))
        return decode_file(path, index, self.pixel_fn, self.max_pixels)


@dataclass
class DecodedBatch:
    """Successes stacked as one N×H×W×3 uint8 tensor; failures kept as records."""

    indices: list[int]
    pixels: torch.Tensor
    widths: list[int]
    heights: list[int]
    hashes: list[bytes]
    failures: list[Decoded] = field(default_factory=list)

    def pin_memory(self) -> DecodedBatch:  # called by DataLoader(pin_memory=True)
        self.pixels = self.pixels.pin_memory()
        return self


def collate_decoded(items: Sequence[Decoded]) -> DecodedBatch:
    good = [item for item in items if item.kind is None and item.pixels is not None]
    pixels = (
        torch.from_numpy(np.stack([item.pixels for item in good]))  # type: ignore[misc]
        if good
        else torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    )
    return DecodedBatch(
        indices=[item.index for item in good],
        pixels=pixels,
        widths=[item.width for item in good],
        heights=[item.height for item in good],
        hashes=[item.content_hash for item in good],
        failures=[item for item in items if item.kind is not None],
    )
