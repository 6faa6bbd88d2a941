"""The Python API for notebooks: the CLI's operations as plain functions.

Keyword arguments are the settings of config.py (``api.encode(..., batch_size=256)``),
with the same defaults and checks as the CLI's flags and a job file's keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa

from meter_batch.config import EncodeConfig, ModelSpec, SearchSettings, settings_fields
from meter_batch.errors import ConfigError
from meter_batch.ingest.encode_run import RunSummary
from meter_batch.ingest.encode_run import encode as _encode
from meter_batch.labels.classify_run import ClassifySummary
from meter_batch.labels.classify_run import classify as _classify
from meter_batch.labels.search import Hit
from meter_batch.labels.search import search as _search
from meter_batch.store.catalog import run_query

_GIVEN_APART = ("images_dir", "store", "model")  # encode's own arguments, not options


def encode(
    images_dir: str | Path,
    store: str | Path,
    *,
    model: str = ModelSpec.name,
    pretrained: str = ModelSpec.pretrained,
    progress: bool | None = None,
    **settings: Any,
) -> RunSummary:
    """Encode every image under ``images_dir`` into ``store``; see `meter-batch encode --help`.
    ``settings``: any encode setting (batch_size, workers, device, precision, exact, ...);
    one given as None keeps its default."""
    valid = [f.name for f in dataclasses.fields(EncodeConfig) if f.name not in _GIVEN_APART]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown encode option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    config = EncodeConfig(
        images_dir=Path(images_dir),
        store=Path(store),
        model=ModelSpec(name=model, pretrained=pretrained),
        **{name: value for name, value in settings.items() if value is not None},
    )
    return _encode(config, interactive=progress)


def classify(
    store: str | Path, labels: str | Path, progress: bool | None = None, make_current: bool = False
) -> ClassifySummary:
    """Score the store against a label-set file; see `meter-batch classify --help`."""
    return _classify(Path(store), Path(labels), interactive=progress, make_current=make_current)


def search(
    store: str | Path,
    text: str | None = None,
    image: str | Path | None = None,
    k: int = SearchSettings.k,
) -> list[Hit]:
    """Nearest stored images to ``text`` or ``image``; see `meter-batch search --help`."""
    return _search(Path(store), text, Path(image) if image is not None else None, k)


def query(store: str | Path, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run SQL against the store's catalog (read-only), ``params`` bound as $name."""
    return run_query(Path(store), sql, params)


def _settings_doc() -> str:
    lines = [
        f"    {spec.name}: {details.help}"
        for spec, details, _ in settings_fields(EncodeConfig)
        if spec.name not in _GIVEN_APART
    ]
    return "\n\nEncode settings:\n" + "\n".join(lines)


encode.__doc__ = (encode.__doc__ or "") + _settings_doc()
