"""Shared fixtures: tiny open_clip configs written by the tests, images made on the fly, and
stores encoded from them. The functions they build on are in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.ingest.encode_run import encode
from tests.helpers import TINY_RESNET, TINY_VIT, make_images, write_config


@pytest.fixture(scope="session")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("configs")
    return {
        "vit": write_config(folder, "mb-tiny-vit", TINY_VIT),
        "resnet": write_config(folder, "mb-tiny-resnet", TINY_RESNET),
    }


@pytest.fixture(scope="session")
def vit_checkpoint(configs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain state dict of the tiny ViT with seed-7 random weights (not our seed 0)."""
    open_clip.add_model_config(configs["vit"])
    torch.manual_seed(7)
    model = open_clip.create_model("mb-tiny-vit")
    path = tmp_path_factory.mktemp("ckpt") / "tiny_vit.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "images"
    return folder, make_images(folder, 14)


@pytest.fixture
def checkpoint_model(configs: dict[str, Path], vit_checkpoint: Path) -> ModelSpec:
    return ModelSpec(str(configs["vit"]), str(vit_checkpoint))


@pytest.fixture
def store(
    tmp_path: Path, image_dir: tuple[Path, list[str]], checkpoint_model: ModelSpec
) -> tuple[Path, Path, ModelSpec]:
    """image_dir encoded with the checkpoint (fast path): (images, store, model)."""
    images, _ = image_dir
    encode(EncodeConfig(images_dir=images, store=tmp_path / "store", model=checkpoint_model,
                        workers=0), interactive=False)  # fmt: skip
    return images, tmp_path / "store", checkpoint_model


@pytest.fixture
def encoded(
    tmp_path: Path, image_dir: tuple[Path, list[str]], checkpoint_model: ModelSpec
) -> tuple[Path, list[str], Path]:
    """image_dir encoded with the checkpoint, exact pixels: (images, relpaths, store)."""
    images, relpaths = image_dir
    encode(EncodeConfig(images_dir=images, store=tmp_path / "store", model=checkpoint_model,
                        workers=0, exact=True), interactive=False)  # fmt: skip
    return images, relpaths, tmp_path / "store"
