"""The Python API for notebooks: the CLI's operations as plain functions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa

from meter_batch.config import EncodeConfig, ModelSpec, default_workers
from meter_batch.errors import ConfigError
from meter_batch.ingest.encode_run import RunSummary
from meter_batch.ingest.encode_run import encode as _encode
from meter_batch.labels.classify_run import ClassifySummary
from meter_batch.labels.classify_run import classify as _classify
from meter_batch.labels.search import Hit
from meter_batch.labels.search import search as _search
from meter_batch.store.catalog import run_query


def encode(
    images_dir: str | Path,
    store: str | Path,
    *,
    model: str = "RN50",
    pretrained: str = "none",
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool | None = None,
    **options: Any,
) -> RunSummary:
    """Encode every image under ``images_dir`` into ``store``; see `meter-batch encode --help`.
    ``options``: any other EncodeConfig setting (exact, jpeg_decode, compile, commit_every,
    path_prefix, max_pixels, decode_timeout, part_rows)."""
    fields = {f.name for f in dataclasses.fields(EncodeConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        valid = ", ".join(sorted(fields - {"images_dir", "store", "model"}))
        raise ConfigError(f"unknown encode option(s) {', '.join(unknown)}; valid: {valid}")
    config = EncodeConfig(
        images_dir=Path(images_dir),
        store=Path(store),
        model=ModelSpec(name=model, pretrained=pretrained),
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        device=device,
        precision=precision,
        **options,
    )
    return _encode(config, interactive=progress)


def classify(
    store: str | Path, labels: str | Path, progress: bool | None = None
) -> ClassifySummary:
    """Score the store against a label-set file; see `meter-batch classify --help`."""
    return _classify(Path(store), Path(labels), interactive=progress)


def search(
    store: str | Path, text: str | None = None, image: str | Path | None = None, k: int = 20
) -> list[Hit]:
    """Nearest stored images to ``text`` or ``image``; see `meter-batch search --help`."""
    return _search(Path(store), text, Path(image) if image is not None else None, k)


def query(store: str | Path, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run SQL against the store's catalog (read-only), ``params`` bound as $name."""
    return run_query(Path(store), sql, params)
