"""Shared fixtures: tiny open_clip configs written by the tests, images made on the fly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from meter_batch.tools.samples import sample_image

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": TEXT_CFG,
}
TINY_RESNET = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": TEXT_CFG,
}


def write_config(folder: Path, name: str, config: dict) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


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


def make_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` varied images (sizes, JPEG/PNG, RGB/L/opaque RGBA); relative paths returned.

    Only modes whose pixels open_clip's reference loop already gets right: the odd ones
    (transparency, palettes, 16-bit, CMYK, EXIF rotation) are tests/test_odd_files.py's."""
    rng = random.Random(seed)
    sizes = [(97, 61), (64, 64), (300, 200), (45, 120), (640, 480), (33, 33)]
    written = []
    for number in range(count):
        image = sample_image(rng, sizes[number % len(sizes)])
        mode = ["RGB", "RGB", "L", "RGBA", "RGB"][number % 5]
        image = image.convert(mode)
        suffix = ".jpg" if mode in ("RGB", "L") and number % 2 == 0 else ".png"
        relative = f"sub{number % 3}/img-{number:03d}{suffix}"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / relative)
        written.append(relative)
    return written


@pytest.fixture
def image_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "images"
    return folder, make_images(folder, 14)


def reference_embeddings(config: Path, checkpoint: Path, paths: list[Path]) -> torch.Tensor:
    """The users' per-image loop, verbatim: open_clip preprocess + encode_image + normalize."""
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(
        config.stem, pretrained=str(checkpoint)
    )
    model.eval()
    rows = []
    with torch.no_grad():
        for path in paths:
            image = preprocess(Image.open(path)).unsqueeze(0)
            features = model.encode_image(image)
            rows.append(features / features.norm(dim=-1, keepdim=True))
    return torch.cat(rows)
