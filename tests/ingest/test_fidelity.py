"""The fast paths (JPEG DCT scaling in the workers; the device JPEG decoder with its cropped
resize) keep embeddings close to the reference path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meter_batch.config import ModelSpec
from meter_batch.ingest.decode import PixelStage, split_preprocess
from meter_batch.model.loading import load_model
from meter_batch.store.commit import open_store
from tests.helpers import encode_images, stored_vectors

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs shipped with scikit-image, as large JPEGs (2.5x: >= 896 px short
    side, so a 224-px model's fast path decodes them at 1/2 or 1/4 DCT scale)."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    written = 0
    for name in PHOTOS:
        try:
            array = getattr(data, name)()
        except Exception:
            continue
        image = Image.fromarray(array).convert("RGB")
        scale = max(2.5, 900 / min(image.size))
        large = image.resize(
            (int(image.width * scale), int(image.height * scale)), Image.Resampling.BICUBIC
        )
        large.save(folder / f"{name}.jpg", quality=92)
        large.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{name}-m.jpg", quality=85)
        written += 2
    assert written >= 8, "scikit-image ships too few photos"
    return folder


def _embeddings(
    images: Path, store: Path, exact: bool, jpeg_decode: str = "auto"
) -> dict[str, np.ndarray]:
    # RN50: a real-size config, 224 px input, 1024-d
    encode_images(images, store, "RN50", workers=2, exact=exact, jpeg_decode=jpeg_decode)
    return stored_vectors(store)


def _pixels_differ(path: Path) -> bool:
    from meter_batch.ingest.decode import DecodeOptions, decode_file

    stage = split_preprocess(load_model(ModelSpec("RN50", "none")).reference_preprocess)
    exact = decode_file(bytes(path), 0, DecodeOptions(stage.transform, 10**9))
    fast = decode_file(bytes(path), 0, DecodeOptions(stage.transform, 10**9, stage.short_side))
    assert exact.pixels is not None and fast.pixels is not None
    difference = np.abs(exact.pixels.astype(int) - fast.pixels.astype(int)).mean()
    return bool(0 < difference < 4)


def test_fast_path_stays_close_to_the_reference_on_real_photos(tmp_path, photos):
    exact = _embeddings(photos, tmp_path / "exact", exact=True)
    fast = _embeddings(photos, tmp_path / "fast", exact=False)
    assert set(exact) == set(fast)
    cosines = np.array([exact[p] @ fast[p] for p in exact])
    assert cosines.mean() >= 0.995 and cosines.min() >= 0.98, cosines
    assert _pixels_differ(photos / "retina.jpg")  # the fast path really decoded otherwise
    runs = [open_store(tmp_path / s).manifest.runs[-1].preprocess_path for s in ("exact", "fast")]
    assert runs == ["exact", "fast"]


def test_device_decoding_stays_close_to_the_reference_on_real_photos(tmp_path, photos):
    """The GPU path's own code (decode_jpeg, then the resize of what the crop keeps), run
    by torchvision's CPU decoder here: it is the default on a GPU machine."""
    exact = _embeddings(photos, tmp_path / "exact", exact=True)
    device = _embeddings(photos, tmp_path / "device", exact=False, jpeg_decode="device")
    assert set(exact) == set(device)
    cosines = np.array([exact[p] @ device[p] for p in exact])
    assert cosines.mean() >= 0.995 and cosines.min() >= 0.98, cosines
    assert open_store(tmp_path / "device").manifest.runs[-1].jpeg_decode == "device"
    # the random-weight model is forgiving, so compare the pixels too: the device decoder's
    # crop against open_clip's preprocess (PIL decode, resize, crop), photo by photo
    stage = split_preprocess(load_model(ModelSpec("RN50", "none")).reference_preprocess)
    for path in sorted(photos.iterdir()):
        difference = _device_pixel_difference(path, stage)
        assert difference.mean() < 0.15 and difference.max() <= 4, path.name  # seen: 0.11, 4


def _device_pixel_difference(path: Path, stage: PixelStage) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from meter_batch.ingest.decode import DecodeOptions, decode_file
    from meter_batch.ingest.gpu_decode import DeviceJpegDecoder

    reference = decode_file(bytes(path), 0, DecodeOptions(stage.transform, 10**9)).pixels
    decoder = DeviceJpegDecoder(
        torch.device("cpu"), stage.short_side, DecodeOptions(lambda image: image, 10**9)
    )
    image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    ours = decoder.resize_crop(image[None])[0].numpy()
    assert reference is not None and ours.shape == reference.shape
    return np.abs(ours.astype(int) - reference.astype(int))
