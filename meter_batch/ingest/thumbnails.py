"""Thumbnails made from image files: WebP, 128 px on the long side, upright (EXIF).

Made only from a file whose bytes still hash to the stored image's: an image edited
since it was encoded shows other pixels than its stored embedding saw. Decoding runs
on a few threads (Pillow releases the GIL while it decodes and resizes), JPEGs at a
reduced scale (`draft`), which is most of the cost saved. Used by `report` (the images
it shows) and `encode --thumbnails` (every image encoded, before its file is deleted).
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
        image.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))  # JPEG: decode smaller
        upright = ImageOps.exif_transpose(image)
        rgb = upright.convert("RGB")
    rgb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return Thumbnail(digest, out.getvalue(), rgb.width, rgb.height)
