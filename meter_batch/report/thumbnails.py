"""Thumbnails of the images a report shows: from the store's cache, else made from the
image files (ingest/thumbnails.py; cached for the next report), else a placeholder."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meter_batch.ingest.thumbnails import ThumbnailSource, make_thumbnails
from meter_batch.store.commit import Store
from meter_batch.store.thumbnails import Thumbnail, read_thumbnails

log = logging.getLogger(__name__)


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


def thumbnails(store: Store, wanted: Iterable[Wanted], interactive: bool | None) -> Thumbnails:
    by_hash = {w.content_hash: w for w in wanted}
    found = read_thumbnails(store, by_hash)
    sources = [
        ThumbnailSource(h, w.file)
        for h, w in sorted(by_hash.items())
        if h not in found and w.file is not None
    ]
    made = make_thumbnails(sources, interactive)
    found.update((t.content_hash, t) for t in made)
    missing = len(set(by_hash) - set(found))
    if missing:
        log.info("%d image(s) have no file with their stored bytes: placeholders shown", missing)
    return Thumbnails(found, made, missing)
