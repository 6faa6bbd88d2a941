"""File bytes -> uint8 pixels of the model's input size, or a failure record.

Runs inside DataLoader worker processes. Never raises for a bad file: every file
ends as a `Decoded` with pixels, or with a failure `kind` and the decoder's message.
The pixel stage is open_clip's own eval transform cut before ToTensor/Normalize,
so resize, crop and colour conversion are exactly the reference's; normalization
happens on the device (encode.py).
"""

from __future__ import annotations

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

from meter_batch import faults
from meter_batch.errors import ModelError
from meter_batch.ingest.pixels import frame_count, normalize_image
from meter_batch.ingest.scan import WorkList
from meter_batch.ingest.thumbnails import picture, picture_of
from meter_batch.store.records import FailureKind
from meter_batch.store.schema import content_hash
from meter_batch.store.thumbnails import Thumbnail

PixelFn = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class PixelStage:
    """The CPU half of open_clip's preprocess, plus the constants the device half needs."""

    transform: PixelFn
    mean: tuple[float, ...]
    std: tuple[float, ...]
    short_side: int  # the model's input size (the smaller side)


@dataclass(frozen=True)
class DecodeOptions:
    """How workers decode. ``draft_to``: let large JPEGs decode at a reduced DCT scale,
    never below twice the model's input (the fast path); None decodes in full (exact)."""

    pixel_fn: PixelFn
    max_pixels: int
    draft_to: int | None = None
    jpeg_on_device: bool = False  # plain JPEGs: ship the bytes, the model's device decodes
    thumbnails: bool = False  # encode --thumbnails: the thumbnail too, from the same decode


def split_preprocess(preprocess: Any) -> PixelStage:
    """Cut open_clip's eval Compose at ToTensor: PIL steps stay, Normalize moves to the device."""
    steps = list(getattr(preprocess, "transforms", []))
    cut = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if cut is None or len(steps) != cut + 2 or not isinstance(steps[cut + 1], T.Normalize):
        raise ModelError(
            f"unsupported preprocess pipeline (expected ... ToTensor, Normalize): {steps}"
        )
    normalize = steps[cut + 1]
    size = getattr(preprocess, "size", None)
    for step in steps[:cut]:
        size = getattr(step, "size", size) or size
    sides = [size] if isinstance(size, int) else list(size or [224])
    return PixelStage(
        transform=T.Compose(steps[:cut]),
        mean=tuple(float(v) for v in normalize.mean),
        std=tuple(float(v) for v in normalize.std),
        short_side=int(min(sides)),
    )


@dataclass
class Decoded:
    """One file's outcome: ``pixels`` (H×W×3 uint8) or ``kind`` + ``message``."""

    index: int
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    frames: int = 1
    size: int = 0  # as read (fstat), which may be newer than the scan's
    mtime_ns: int = 0
    content_hash: bytes = b""
    kind: FailureKind | None = None
    message: str = ""
    # a plain JPEG's bytes for gpu_decode (then ``pixels`` is None): a uint8 tensor, so it
    # travels from the worker through shared memory, not pickled through the pipe
    jpeg: torch.Tensor | None = None
    thumbnail: Thumbnail | None = None  # encode --thumbnails, where the worker decoded it


def configure_decoder_process(in_worker: bool = True) -> None:
    """PIL settings for a process that decodes; warning filters are per process.

    In the main process (``workers=0``) only the truncation rule is set, so a library
    user's global PIL and torch settings stay theirs.
    """
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not embed grey
    register_optional_decoders()
    if in_worker:
        Image.MAX_IMAGE_PIXELS = None  # our own cap (decode_file) runs first, from the header
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        torch.set_num_threads(1)


_optional = {"heif": False}


def register_optional_decoders() -> None:
    """HEIC/HEIF through pillow-heif when the `heic` extra is installed (AVIF: Pillow)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()
    _optional["heif"] = True


def worker_init(worker_id: int) -> None:
    configure_decoder_process(in_worker=True)


def decode_file(path: bytes, index: int, options: DecodeOptions) -> Decoded:
    """Decode one file; every problem becomes a failure kind."""
    faults.decode_hook(path)
    result = Decoded(index)
    try:
        data = _read_stable(path, result)
    except FileNotFoundError as exc:
        return Decoded(index, kind=FailureKind.VANISHED, message=exc.strerror or str(exc))
    except PermissionError as exc:
        return Decoded(index, kind=FailureKind.PERMISSION_DENIED, message=exc.strerror or str(exc))
    except OSError as exc:
        return Decoded(index, kind=FailureKind.DECODE_ERROR, message=f"read failed: {exc}")
    except MemoryError:
        return Decoded(index, kind=FailureKind.TOO_LARGE, message="the file does not fit in memory")
    if data is None:
        return result  # unstable: recorded by _read_stable
    result.content_hash = content_hash(data)
    decode_into_result(result, data, options)
    return result


def decode_into_result(result: Decoded, data: bytes, options: DecodeOptions) -> None:
    """Pixels (or shipped JPEG bytes) into ``result``; a problem becomes its failure kind."""
    try:
        _decode_into(result, data, options)
    except MemoryError:
        result.pixels = None
        result.kind, result.message = FailureKind.TOO_LARGE, "decoding it ran out of memory"
    except Exception as exc:
        result.pixels = None
        result.kind, result.message = classify_decode_error(exc, data)


def _read_stable(path: bytes, result: Decoded) -> bytes | None:
    """The file's bytes, or None (result marked `unstable`) if it changed while read."""
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
        after = os.fstat(handle.fileno())
    result.size, result.mtime_ns = after.st_size, after.st_mtime_ns
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(
        data
    ) != after.st_size:
        result.kind = FailureKind.UNSTABLE
        result.message = f"changed while being read ({before.st_size} -> {after.st_size} bytes)"
        return None
    return data


def _decode_into(result: Decoded, data: bytes, options: DecodeOptions) -> None:
    with warnings.catch_warnings():
        # our own max_pixels cap (below) replaces PIL's bomb warning, in the main process
        # (--workers 0, image search) too; workers ignore it process-wide
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
    with image:
        result.width, result.height = image.size
        if image.width * image.height > options.max_pixels:
            result.kind = FailureKind.TOO_LARGE
            result.message = (
                f"{image.width}x{image.height} exceeds the {options.max_pixels}-pixel cap"
            )
            return
        result.frames = frame_count(image)
        if options.jpeg_on_device and result.frames == 1 and is_plain_jpeg(image, data):
            result.jpeg = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return
        if result.frames > 1:
            image.seek(0)  # only multi-frame files: some formats refuse seek() otherwise
        if options.draft_to and image.format == "JPEG":
            _draft(image, options.draft_to)
        image.load()
        upright = normalize_image(image)
        pixels = options.pixel_fn(upright)
        if options.thumbnails:  # a JPEG again from its bytes at 1/8 scale: cheaper than
            # resizing the picture decoded for the model (drafted to 2x its input at most)
            jpeg = image.format == "JPEG"
            digest = result.content_hash
            result.thumbnail = picture(digest, data) if jpeg else picture_of(digest, upright)
    result.pixels = np.asarray(pixels, dtype=np.uint8)


def is_plain_jpeg(image: Image.Image, data: bytes) -> bool:
    """A JPEG whose pixels need none of pixels.normalize_image's corrections (no CMYK,
    no EXIF rotation), so the device decoder's plain RGB output is the right picture.
    It must end with the EOI marker: nvjpeg may fill a truncated file's rest with grey
    where the CPU path records it as `truncated`."""
    return (
        data.rstrip(b"\0").endswith(b"\xff\xd9")
        and image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and "transparency" not in image.info
        and image.getexif().get(_ORIENTATION, 1) == 1
    )


def _draft(image: Image.Image, short_side: int) -> None:
    """JPEG DCT scaling (1/2, 1/4, 1/8) while the short side stays >= 2x the model input:
    a 1920x1080 photo decodes at 960x540 for a 224-px model, ~3x faster, and bicubic
    resizing from there changes the embedding by ~1e-3 in cosine (BENCHMARKS.md)."""
    scale = 2 * short_side / min(image.size)
    if scale <= 0.5:
        width, height = image.size
        image.draft(image.mode, (int(width * scale) + 1, int(height * scale) + 1))


_ORIENTATION = 0x0112  # EXIF tag
_UNSUPPORTED_BRANDS = (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1", b"ftypavif")


def classify_decode_error(exc: BaseException, data: bytes) -> tuple[FailureKind, str]:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, Image.UnidentifiedImageError):
        if not data:
            return FailureKind.UNIDENTIFIED, "empty file (0 bytes)"
        if data[4:12] in _UNSUPPORTED_BRANDS and not _optional["heif"]:
            brand = data[8:12].decode("ascii", "replace")
            return FailureKind.UNSUPPORTED_FORMAT, (
                f"HEIF/AVIF image (brand {brand!r}) and no decoder for it: "
                f"install the extra meter_batch[heic]"
            )
        return (
            FailureKind.UNIDENTIFIED,
            f"not an image format Pillow can read (starts with {data[:16]!r})",
        )
    if isinstance(exc, Image.DecompressionBombError):
        return FailureKind.TOO_LARGE, message
    lowered = message.lower()
    if ("decoder" in lowered and "not available" in lowered) or "ghostscript" in lowered:
        return FailureKind.UNSUPPORTED_FORMAT, message
    if isinstance(exc, (OSError, SyntaxError)) and (
        "truncated" in lowered or "premature end" in lowered
    ):
        return FailureKind.TRUNCATED, message
    return FailureKind.DECODE_ERROR, f"{type(exc).__name__}: {message}"


class ImageFiles(torch.utils.data.Dataset[Decoded]):
    """Map-style dataset over a WorkList; item i is file i of the scan."""

    def __init__(self, root: bytes, work: WorkList, options: DecodeOptions) -> None:
        self.root, self.work, self.options = root, work, options

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, index: int) -> Decoded:
        path = os.path.join(self.root, self.work.relpath(index))
        return decode_file(path, index, self.options)


@dataclass
class DecodedBatch:
    """Successes stacked as one N×H×W×3 uint8 tensor; failures kept as records."""

    indices: list[int]
    pixels: torch.Tensor
    good: list[Decoded]  # per success: sizes, frames, hash (pixels dropped)
    failures: list[Decoded] = field(default_factory=list)
    jpegs: list[Decoded] = field(default_factory=list)  # bytes for the device decoder
    # the jpegs' bytes end to end, one tensor: one shared-memory segment per batch travels
    # from a worker instead of one per file (each costs a file-descriptor handshake)
    jpeg_blob: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    jpeg_lengths: list[int] = field(default_factory=list)

    def pin_memory(self) -> DecodedBatch:  # called by DataLoader(pin_memory=True)
        self.pixels = self.pixels.pin_memory()
        return self

    def unpack_jpegs(self) -> None:
        """Give each of ``jpegs`` its bytes back, as a view into the blob."""
        if not self.jpeg_lengths:
            return
        for item, view in zip(self.jpegs, self.jpeg_blob.split(self.jpeg_lengths), strict=True):
            item.jpeg = view
        self.jpeg_blob, self.jpeg_lengths = torch.empty(0, dtype=torch.uint8), []


def collate_decoded(items: Sequence[Decoded]) -> DecodedBatch:
    good = [item for item in items if item.kind is None and item.pixels is not None]
    pixels = (
        torch.from_numpy(np.stack([item.pixels for item in good]))  # type: ignore[misc]
        if good
        else torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    )
    for item in good:
        item.pixels = None  # stacked above; do not ship them twice
    jpegs = [item for item in items if item.kind is None and item.jpeg is not None]
    lengths = [int(item.jpeg.numel()) for item in jpegs]  # type: ignore[union-attr]
    blob = torch.cat([item.jpeg for item in jpegs]) if jpegs else None  # type: ignore[misc]
    for item in jpegs:
        item.jpeg = None  # packed into the blob; unpack_jpegs restores them as views
    batch = DecodedBatch(
        indices=[item.index for item in good],
        pixels=pixels,
        good=good,
        failures=[item for item in items if item.kind is not None],
        jpegs=jpegs,
    )
    if blob is not None:
        batch.jpeg_blob, batch.jpeg_lengths = blob, lengths
    return batch
