"""Nearest stored images to a text or an image, from the FAISS index (text -> image,
image -> image). Read-only: needs no lock and never writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meter_batch.config import ModelSpec, SearchSettings
from meter_batch.errors import ConfigError, InputError, StoreError
from meter_batch.labels.examples import encode_files, encode_image_data
from meter_batch.model.encoder import encode_texts
from meter_batch.model.loading import LoadedModel, load_verified
from meter_batch.store.commit import Store, open_store
from meter_batch.store.index import load_index, searchable
from meter_batch.store.read import paths_of


@dataclass(frozen=True)
class Hit:
    rank: int
    image_id: int
    score: float
    path: str


def search(
    store_root: Path,
    text: str | None = None,
    image: Path | None = None,
    k: int = SearchSettings.k,
    model: ModelSpec | None = None,
) -> list[Hit]:
    if (text is None) == (image is None):
        raise ConfigError("search needs exactly one of a text or --image PATH")
    SearchSettings(k)  # checked as the CLI and the API check it
    searcher = Searcher(open_store(store_root), model)
    query = searcher.text_query(text) if text is not None else searcher.image_query(image)
    found = searcher.nearest(query, k)
    return hits(found, paths_of(searcher.store, [i for i, _ in found]))


def hits(found: list[tuple[int, float]], paths: Mapping[int, str]) -> list[Hit]:
    return [Hit(n, i, round(s, 6), paths.get(i, "?")) for n, (i, s) in enumerate(found, start=1)]


class Searcher:
    """A store's FAISS index and model, loaded once for many queries: `search` makes one
    per call, `serve` keeps one until the next commit. The model loads on first use."""

    def __init__(
        self,
        store: Store,
        model: ModelSpec | None = None,
        loaded: LoadedModel | None = None,
        shards: int = 1,
    ) -> None:
        """``shards`` > 1: the index split for parallel scans (serve, with many queries
        to come; a one-off search would spend longer splitting than scanning)."""
        if not store.manifest.index:
            raise StoreError(f"{store.root} has no committed index yet: run encode first")
        self.store = store
        self.index = searchable(load_index(store.checked(store.manifest.index)), shards)
        self._model, self._loaded = model, loaded

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            at = self.store
            self._loaded = load_verified(at.model_source, at.identity, at.root, self._model)
        return self._loaded

    def text_query(self, text: str | None) -> np.ndarray:
        if not text or not text.strip():
            raise ConfigError("the search text is empty")
        return encode_texts(self.loaded, [text])[0].numpy()

    def image_query(self, image: Path | None) -> np.ndarray:
        assert image is not None
        if image.is_dir():
            raise InputError(f"--image {image} is a folder; give one image file")
        if not image.is_file():
            raise InputError(f"image not found: {image}")
        return encode_files(self.loaded, [image], role="a query")[0].astype(np.float32)

    def image_data_query(self, data: bytes) -> np.ndarray:
        """An image sent as bytes (an upload), decoded and encoded as `encode` would."""
        return encode_image_data(self.loaded, data, role="a query").astype(np.float32)

    def stored_query(self, image_id: int) -> np.ndarray:
        """The stored vector of ``image_id`` (its nearest neighbours: itself first)."""
        try:
            return np.asarray(self.index.reconstruct(image_id), dtype=np.float32)
        except RuntimeError as exc:  # faiss: the id is not in the index
            raise InputError(f"image {image_id} is not in the store's index") from exc

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(image_id, cosine) of the k nearest, best first."""
        scores, ids = self.index.search(query[None, :], k)
        # float16-stored vectors are unit length only to ~1e-3: a cosine may read 1.0003
        return [
            (int(i), min(1.0, max(-1.0, float(s))))
            for i, s in zip(ids[0], scores[0], strict=True)
            if i >= 0
        ]
