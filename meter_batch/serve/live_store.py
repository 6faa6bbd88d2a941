"""The store as of its newest commit, for a reader that stays up: the model, the FAISS
index and the live images' paths loaded once, and loaded again when a commit lands
(each request looks at the manifests folder: one listing). The model is kept across
commits; it is only loaded again if the store's model changed."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from meter_batch.config import ModelSpec
from meter_batch.ingest.thumbnails import ThumbnailSource, make_thumbnails
from meter_batch.labels.search import Searcher
from meter_batch.store.commit import Store, manifest_files, open_store
from meter_batch.store.read import image_file, read_columns, tombstoned_ids
from meter_batch.store.records import RunRecord
from meter_batch.store.schema import content_hash
from meter_batch.store.thumbnails import read_thumbnails

log = logging.getLogger("meter_batch")
# one per core: a query's scan of the index spread over all of them (BENCHMARKS.md: 30 ms
# -> 15 ms for 100,000 x 1024 on 2 cores)
SEARCH_SHARDS = max(1, len(os.sched_getaffinity(0)))
THUMBNAILS_KEPT = 4096  # in memory, most recently shown first out last


@dataclass(frozen=True)
class ImageInfo:
    """A live stored image: what the pages show and where its file was."""

    image_id: int
    path: str
    run_id: str
    content_hash: bytes


@dataclass(frozen=True)
class Snapshot:
    """Everything one request reads, from one commit: a reload never changes it."""

    store: Store
    searcher: Searcher
    images: dict[int, ImageInfo]
    commit: str  # the newest manifest's file name when it was loaded
    runs: dict[str, RunRecord] = field(repr=False)

    def info(self, image_id: int) -> ImageInfo | None:
        return self.images.get(image_id)

    def file_of(self, info: ImageInfo) -> Path | None:
        """Its file, if it lies inside the run's image root once symlinks are resolved
        (None: outside it, or no root recorded): a browser is never handed another file."""
        file = image_file(self.runs, info.run_id, info.path)
        run = self.runs.get(info.run_id)
        if file is None or run is None or run.images_dir is None:
            return None
        try:
            inside = file.resolve().is_relative_to(Path(run.images_dir).resolve())
        except (OSError, RuntimeError):  # a symlink loop
            return None
        return file if inside else None

    def original(self, info: ImageInfo) -> bytes | None:
        """The image's bytes, if its file still holds what was encoded."""
        file = self.file_of(info)
        try:
            data = file.read_bytes() if file is not None else None
        except OSError:
            return None
        return data if data is not None and content_hash(data) == info.content_hash else None


class LiveStore:
    def __init__(self, root: Path, model: ModelSpec | None = None) -> None:
        self.root = root
        self._model = model
        self._reload = threading.Lock()
        self._snapshot = self._load(None)
        self._thumbnails: OrderedDict[bytes, bytes] = OrderedDict()
        self._thumbnails_lock = threading.Lock()

    def current(self) -> Snapshot:
        """The snapshot of the newest commit (loaded now if a commit landed since)."""
        newest = _newest_commit(self.root)
        if newest == self._snapshot.commit:
            return self._snapshot
        with self._reload:
            if newest != self._snapshot.commit:
                self._snapshot = self._load(self._snapshot)
                log.info("serving commit %s: %d images", newest, len(self._snapshot.images))
            return self._snapshot

    def _load(self, previous: Snapshot | None) -> Snapshot:
        commit = _newest_commit(self.root)
        store = open_store(self.root)
        same_model = previous is not None and previous.store.identity == store.identity
        loaded = previous.searcher.loaded if previous is not None and same_model else None
        searcher = Searcher(store, self._model, loaded, shards=SEARCH_SHARDS)
        searcher.loaded  # noqa: B018  (loaded now, not by the first request)
        runs = {run.run_id: run for run in store.manifest.runs}
        return Snapshot(store, searcher, _live_images(store), commit, runs)

    def thumbnail(self, snapshot: Snapshot, info: ImageInfo) -> bytes | None:
        """WebP bytes: from memory, the store's cache, or made from the file now."""
        with self._thumbnails_lock:
            if info.content_hash in self._thumbnails:
                self._thumbnails.move_to_end(info.content_hash)
                return self._thumbnails[info.content_hash]
        found = read_thumbnails(snapshot.store, [info.content_hash]).get(info.content_hash)
        if found is None:
            file = snapshot.file_of(info)
            made = (
                []
                if file is None
                else make_thumbnails([ThumbnailSource(info.content_hash, file)], False)
            )
            found = made[0] if made else None
        if found is None:
            return None
        with self._thumbnails_lock:
            self._thumbnails[info.content_hash] = found.webp
            while len(self._thumbnails) > THUMBNAILS_KEPT:
                self._thumbnails.popitem(last=False)
        return found.webp


def _newest_commit(root: Path) -> str:
    files = manifest_files(root)
    return files[-1].name if files else ""


def _live_images(store: Store) -> dict[int, ImageInfo]:
    dead = tombstoned_ids(store)
    images: dict[int, ImageInfo] = {}
    columns = ["image_id", "path", "run_id", "content_hash"]
    for part in store.live_paths("embeddings"):
        table = read_columns(part, columns)
        for image_id, path, run_id, digest in zip(
            *(table.column(c).to_pylist() for c in columns), strict=True
        ):
            if image_id not in dead:
                images[image_id] = ImageInfo(image_id, path, run_id, digest)
    return images
