"""Thumbnails made from image files: WebP, 128 px on the long side, upright (EXIF).

Made only from a file whose bytes still hash to the stored image's: an image edited
since it was encoded shows other pixels than its stored embedding saw. Decoding runs
on a few threads (Pillow releases the GIL while it decodes and resizes), JPEGs at a
reduced scale (`draft`), which is most of the cost saved. Used by `report` (the images
it shows) and `encode --thumbnails` (the images a run encoded: decode.py makes those
from the image it decodes, with `picture_of`; only the GPU's JPEGs come here).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from meter_batch.progress import Progress
from meter_batch.store.schema import content_hash
from meter_batch.store.thumbnails import Thumbnail

THUMBNAIL_SIDE = 128  # pixels, the long side
WEBP_QUALITY = 75
THREADS = 4


@dataclass(frozen=True)
class ThumbnailSource:
    """A stored image's bytes hash, and the file it was encoded from."""

    content_hash: bytes
    file: Path


def make_thumbnails(
    sources: Sequence[ThumbnailSource], interactive: bool | None
) -> list[Thumbnail]:
    """The thumbnails of the sources whose file still holds the stored bytes."""
    made: list[Thumbnail] = []
    if not sources:
        return made
    with (
        Progress(len(sources), "thumbnails", interactive) as progress,
        ThreadPoolExecutor(THREADS, thread_name_prefix="thumbnails") as pool,
    ):
        for thumbnail in pool.map(_from_file, sources):
            progress.update(1)
            if thumbnail is not None:
                made.append(thumbnail)
    return made


def _from_file(source: ThumbnailSource) -> Thumbnail | None:
    try:
        data = source.file.read_bytes()
    except OSError:
        return None  # gone (or unreadable): a placeholder
    if content_hash(data) != source.content_hash:
        return None  # another image under the same name now
    try:
        return picture(source.content_hash, data)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def picture(digest: bytes, data: bytes) -> Thumbnail:
    """A WebP of at most THUMBNAIL_SIDE pixels on its long side, upright (EXIF)."""
    with Image.open(io.BytesIO(data)) as image:
        # a JPEG decodes at the smallest DCT scale that still covers the thumbnail
        image.draft("RGB", _thumbnail_size(image.size))
        return picture_of(digest, ImageOps.exif_transpose(image) or image)


def _thumbnail_size(size: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, THUMBNAIL_SIDE / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def picture_of(digest: bytes, image: Image.Image) -> Thumbnail:
    """The thumbnail of an image already decoded and upright (a decode worker's). Resized
    with a box reduction first (`reducing_gap`), then converted: no full-size copy."""
    size = _thumbnail_size(image.size)
    small = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    rgb = small.convert("RGB")
    out = io.BytesIO()
    # method 0: the fastest WebP effort; files within a few % of method 4's here
    rgb.save(out, "WEBP", quality=WEBP_QUALITY, method=0)
    return Thumbnail(digest, out.getvalue(), rgb.width, rgb.height)
