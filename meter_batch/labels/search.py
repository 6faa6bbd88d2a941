"""Nearest stored images to a text or an image, from the FAISS index (text -> image,
image -> image). Read-only: needs no lock and never writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meter_batch.config import ModelSpec, SearchSettings
from meter_batch.errors import ConfigError, InputError, StoreError
from meter_batch.labels.examples import encode_files
from meter_batch.model.encoder import encode_texts
from meter_batch.model.loading import load_verified
from meter_batch.store.commit import Store, open_store
from meter_batch.store.index import load_index
from meter_batch.store.index import search as index_search
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
    store = open_store(store_root)
    if not store.manifest.index:
        raise StoreError(f"{store_root} has no committed index yet: run encode first")
    query = (
        _text_query(store, text, model) if text is not None else _image_query(store, image, model)
    )
    scores, ids = index_search(load_index(store.checked(store.manifest.index)), query[None, :], k)
    # float16-stored vectors are unit length only to ~1e-3: a cosine may read 1.0003
    found = [
        (int(i), min(1.0, max(-1.0, float(s))))
        for i, s in zip(ids[0], scores[0], strict=True)
        if i >= 0
    ]
    paths = paths_of(store, [i for i, _ in found])
    return [Hit(n, i, round(s, 6), paths.get(i, "?")) for n, (i, s) in enumerate(found, start=1)]


def _text_query(store: Store, text: str | None, model: ModelSpec | None) -> np.ndarray:
    if not text or not text.strip():
        raise ConfigError("the search text is empty")
    loaded = load_verified(store.model_source, store.identity, store.root, model)
    return encode_texts(loaded, [text])[0].numpy()


def _image_query(store: Store, image: Path | None, model: ModelSpec | None) -> np.ndarray:
    assert image is not None
    if image.is_dir():
        raise InputError(f"--image {image} is a folder; give one image file")
    if not image.is_file():
        raise InputError(f"image not found: {image}")
    loaded = load_verified(store.model_source, store.identity, store.root, model)
    return encode_files(loaded, [image], role="a query")[0].astype(np.float32)
