"""What makes two embeddings comparable, and how to load their model again. No torch:
the store records and compares identities, and `query` / `verify` must stay light."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meter_batch.config import ModelSpec

# Recorded in every store's model identity: stores never mix two pixel policies. Bump it
# whenever ingest/pixels.py changes the pixels any image gets.
PIXEL_POLICY = "open_clip-eval+exif+alpha-white+hdr-scaled/1"


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two embeddings comparable. Stored in store.json; compared on every run."""

    architecture: str
    config_sha256: str
    pretrained: str
    checkpoint_sha256: str | None
    seed: int | None
    quick_gelu: bool
    preprocess: dict[str, Any]
    embed_dim: int
    pixel_policy: str = PIXEL_POLICY

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelIdentity:
        return cls(**data)

    def differences(self, other: ModelIdentity) -> list[str]:
        mine, theirs = self.to_json(), other.to_json()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def model_source(spec: ModelSpec) -> ModelSpec:
    """How to load the store's model again later (classify, search): files as absolute
    paths, names and tags as given."""

    def absolute(value: str) -> str:
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value

    return ModelSpec(absolute(spec.name), absolute(spec.pretrained), spec.seed)
