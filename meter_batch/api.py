"""The Python API for notebooks: the CLI's operations as plain functions."""

from __future__ import annotations

from pathlib import Path

from meter_batch.config import EncodeConfig, ModelSpec, default_workers
from meter_batch.pipeline import RunSummary
from meter_batch.pipeline import encode as _encode


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
) -> RunSummary:
    """Encode every image under ``images_dir`` into ``store``; see `meter-batch encode --help`."""
    config = EncodeConfig(
        images_dir=Path(images_dir),
        store=Path(store),
        model=ModelSpec(name=model, pretrained=pretrained),
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        device=device,
        precision=precision,
    )
    return _encode(config, interactive=progress)
