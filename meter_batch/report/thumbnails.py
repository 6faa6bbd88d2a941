"""Thumbnails of the images a report shows: from the store's cache, else made from the
image files (and cached for the next report), else a placeholder.

A thumbnail is made only from a file whose bytes still hash to the stored image's: an
image edited since it was encoded has other pixels than its stored embedding saw.
Decoding runs on a few threads (Pillow releases the GIL while it decodes and resizes),
JPEGs at a reduced scale (`draft`), which is most of the cost saved.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from meter_batch.progress import Progress
from meter_batch.store.commit import Store
from meter_batch.store.records import RunRecord
from meter_batch.store.schema import content_hash
from meter_batch.store.thumbnails import Thumbnail, read_thumbnails

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 128  # pixels, the long side
WEBP_QUALITY = 75
THREADS = 4


@dataclass(frozen=True)
class Wanted:
    """An image to show: its bytes' hash, and where its file was when it was encoded."""

    content_hash: bytes
    file: Path | None  # None: no run recorded where its images were


@dataclass(frozen=True)
class Thumbnails:
    found: dict[bytes, Thumbnail]  # by content hash; an image not here gets a placeholder
    made: list[Thumbnail]  # made now from files: for the store's cache
    missing: int  # no cached thumbnail and no file with the stored bytes


def image_file(runs: dict[str, RunRecord], run_id: str, path: str) -> Path | None:
    """The file a stored path came from: the run's image folder + the path below its prefix."""
    run = runs.get(run_id)
    if run is None or run.images_dir is None or not path.startswith(run.path_prefix):
        return None
    return Path(run.images_dir) / path[len(run.path_prefix) :]


def thumbnails(store: Store, wanted: Iterable[Wanted], interactive: bool | None) -> Thumbnails:
    by_hash = {w.content_hash: w for w in wanted}
    found = read_thumbnails(store, by_hash)
    to_make = [w for h, w in sorted(by_hash.items()) if h not in found and w.file is not None]
    made: list[Thumbnail] = []
    if to_make:
        with (
            Progress(len(to_make), "thumbnails", interactive) as progress,
            ThreadPoolExecutor(THREADS, thread_name_prefix="thumbnails") as pool,
        ):
            for thumbnail in pool.map(_make, to_make):
                progress.update(1)
                if thumbnail is not None:
                    made.append(thumbnail)
    found.update((t.content_hash, t) for t in made)
    missing = len(set(by_hash) - set(found))
    if missing:
        log.info("%d image(s) have no file with their stored bytes: placeholders shown", missing)
    return Thumbnails(found, made, missing)


def _make(wanted: Wanted) -> Thumbnail | None:
    assert wanted.file is not None
    try:
        data = wanted.file.read_bytes()
    except OSError:
        return None  # gone (or unreadable): a placeholder
    if content_hash(data) != wanted.content_hash:
        return None  # another image under the same name now
    try:
        return picture(wanted.content_hash, data)
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
