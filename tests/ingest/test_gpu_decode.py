"""The device JPEG decoder (nvjpeg on a GPU; torchvision's libjpeg here on the CPU)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from meter_batch.config import EncodeConfig
from meter_batch.errors import ConfigError
from meter_batch.ingest import encode_loop, gpu_decode
from meter_batch.ingest.decode import Decoded, DecodeOptions, ImageFiles, collate_decoded
from meter_batch.ingest.scan import collect_work
from meter_batch.ingest.workers import isolated_decode
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from meter_batch.store.records import FailureKind
from tests.helpers import arrow_picture, encode_images, make_images, stored_vectors


@pytest.fixture
def jpeg_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    make_images(folder, 12)  # JPEG and PNG, RGB / L / RGBA
    for number, size in enumerate(((640, 480), (333, 517), (1200, 700))):
        arrow_picture(size).save(folder / f"big-{number}.jpg", quality=88)
    return folder


def test_device_decoded_jpegs_embed_like_the_reference(tmp_path, jpeg_dir, configs, monkeypatch):
    decoded: list[int] = []
    real = gpu_decode.DeviceJpegDecoder._decode

    def counting(self, tensors):
        decoded.append(len(tensors))
        return real(self, tensors)

    monkeypatch.setattr(gpu_decode.DeviceJpegDecoder, "_decode", counting)
    device = encode_images(
        jpeg_dir, tmp_path / "dev", configs["vit"], workers=2, jpeg_decode="device"
    )
    jpegs = [p for p in jpeg_dir.rglob("*.jpg")]
    assert sum(decoded) == len(jpegs) >= 5  # every JPEG here is plain: all went to the device
    exact = encode_images(jpeg_dir, tmp_path / "ref", configs["vit"], workers=0, exact=True)
    assert device.encoded == exact.encoded == 15 and device.failed == 0
    ours, reference = stored_vectors(tmp_path / "dev"), stored_vectors(tmp_path / "ref")
    assert sorted(ours) == sorted(reference)
    cosines = [float(ours[p] @ reference[p]) for p in reference]
    assert min(cosines) >= 0.995 and float(np.mean(cosines)) >= 0.999
    assert open_store(tmp_path / "dev").manifest.runs[-1].jpeg_decode == "device"
    auto = encode_images(jpeg_dir, tmp_path / "auto", configs["vit"], workers=0)
    # auto on a CPU: PIL in the workers
    assert open_store(tmp_path / "auto").manifest.runs[-1].jpeg_decode == "workers"
    assert auto.encoded == 15


def test_files_the_device_decoder_rejects_are_decoded_on_the_cpu(
    tmp_path, jpeg_dir, configs, monkeypatch
):
    real = gpu_decode.DeviceJpegDecoder._decode

    def picky(self, tensors):
        if len(tensors) > 1 or int(tensors[0].numel()) % 2:  # batches, and odd-sized files
            raise RuntimeError("nvjpeg says no")
        return real(self, tensors)

    monkeypatch.setattr(gpu_decode.DeviceJpegDecoder, "_decode", picky)
    fallbacks: list[int] = []
    real_isolated = encode_loop.isolated_decode

    def counted_isolated(dataset, position, timeout):
        fallbacks.append(position)
        return real_isolated(dataset, position, timeout)

    monkeypatch.setattr(encode_loop, "isolated_decode", counted_isolated)
    summary = encode_images(
        jpeg_dir, tmp_path / "dev", configs["vit"], workers=0, jpeg_decode="device"
    )
    reference = encode_images(jpeg_dir, tmp_path / "ref", configs["vit"], workers=0)
    assert summary.encoded == reference.encoded == 15 and summary.failed == 0
    ours, theirs = stored_vectors(tmp_path / "dev"), stored_vectors(tmp_path / "ref")
    odd = [p for p in theirs if p.endswith(".jpg") and (jpeg_dir / p).stat().st_size % 2]
    assert len(fallbacks) == len(odd) > 0  # exactly those took the isolated CPU path ...
    for path in odd:  # ... and came out exactly like the workers' PIL decoding
        assert np.allclose(ours[path], theirs[path], atol=2e-3)


def test_resize_crop_matches_torchvision_geometry():
    options = DecodeOptions(lambda image: image, 10**8)
    decoder = gpu_decode.DeviceJpegDecoder(torch.device("cpu"), 64, options)
    image = torch.zeros((3, 90, 200), dtype=torch.uint8)
    image[:, :, 100:] = 255  # right half white: the crop must be centred
    out = decoder.resize_crop(image[None])[0]
    assert out.shape == (64, 64, 3)
    assert out[:, :30].float().mean() < 5 and out[:, 34:].float().mean() > 250
    # grouped by size, in chunks, each image lands back in its own place
    other = torch.full((3, 64, 48), 77, dtype=torch.uint8)
    images = [image, other, image.flip(2), other, image]
    decoder_chunks = gpu_decode.GROUP
    gpu_decode.GROUP = 2
    try:
        crops = decoder.resize_crop_all(images)
    finally:
        gpu_decode.GROUP = decoder_chunks
    for original, crop in zip(images, crops, strict=True):
        assert crop is not None and torch.equal(crop, decoder.resize_crop(original[None])[0])
    assert crops[0] is not None and crops[2] is not None  # as the loop checked; for mypy
    assert not torch.equal(crops[0], crops[2])


def _resize_whole_then_crop(images: torch.Tensor, side: int) -> torch.Tensor:
    """The reference: torchvision's resize of the short side, then its center crop."""
    resized = TF.resize(images.float(), [side], InterpolationMode.BICUBIC, antialias=True)
    crop = TF.center_crop(resized, [side, side])
    return crop.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _near_one_to_one(count: int) -> list[tuple[int, int, int]]:
    """Seeded geometries whose short side is 0.6-1.4x the side: where bicubic follows each
    pixel, so a sampling shift shows most (and short sides just under the side)."""
    rng = random.Random(6)
    cases = []
    for _ in range(count):
        side = rng.choice((64, 96))
        short = max(1, int(side * rng.uniform(0.6, 1.4)))
        long = rng.randint(short, short * 6)
        cases.append((short, long, side) if rng.random() < 0.5 else (long, short, side))
    return cases


GEOMETRIES = [
    (1080, 1920, 224), (1920, 1080, 224), (480, 640, 224), (300, 1000, 224), (225, 300, 224),
    (224, 224, 224), (100, 150, 224), (60, 900, 224), (3000, 4000, 224), (2001, 2000, 224),
    (1536, 2048, 224),
    # short side just under the side: PyTorch's CPU kernel copies an axis whose input and
    # output sizes match, whatever the scale (found by review: errors of 255 levels)
    (221, 300, 224), (300, 221, 224), (223, 224, 224), (333, 4820, 336),
    # near 1:1, where a fixed shift tolerance gave 2-level errors
    (243, 3845, 224), (3458, 238, 256), (255, 510, 256), (253, 1043, 256),
]  # fmt: skip


@pytest.mark.parametrize(("height", "width", "side"), GEOMETRIES + _near_one_to_one(150))
def test_resize_crop_resizes_only_what_the_crop_keeps(height, width, side):
    generator = torch.Generator().manual_seed(height * 10_000 + width)
    noise = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, generator=generator)
    decoder = gpu_decode.DeviceJpegDecoder(
        torch.device("cpu"), side, DecodeOptions(lambda image: image, 10**8)
    )
    ours, whole = decoder.resize_crop(noise), _resize_whole_then_crop(noise, side)
    assert ours.shape == whole.shape == (2, side, side, 3)
    difference = (ours.int() - whole.int()).abs()
    # noise is the worst case (every pixel an edge): float sums in another order, off by one
    assert difference.max() <= 1 and difference.float().mean() < 0.25


def test_the_cropped_resize_reads_a_part_of_wide_frames():
    wide = gpu_decode.kept_input(1920, 398, 224)  # a 1920x1080 frame's long axis
    assert wide.first >= 3 and wide.stop - wide.start < 1200  # not the 1,920 columns
    assert gpu_decode.kept_input(1080, 224, 224) == gpu_decode.KeptInput(0, 1080, 0, 224 / 1080)


def test_exact_excludes_device_decoding(tmp_path):
    with pytest.raises(ConfigError, match="exclude each other"):
        EncodeConfig(images_dir=tmp_path, store=tmp_path / "s", exact=True, jpeg_decode="device")


def test_a_garbled_jpeg_ends_in_exactly_one_row(tmp_path, configs):
    folder = tmp_path / "images"
    folder.mkdir()
    arrow_picture((300, 200)).save(folder / "ok.jpg", quality=90)
    good = (folder / "ok.jpg").read_bytes()
    start = good.find(b"\xff\xda")  # scan data: garble it, keep the header and the EOI marker
    (folder / "garbled.jpg").write_bytes(good[: start + 20] + b"\xff\x00" * 3000 + b"\xff\xd9")
    summary = encode_images(
        folder, tmp_path / "store", configs["vit"], workers=0, jpeg_decode="device"
    )
    rows = run_query(tmp_path / "store", "SELECT path, kind FROM failures").to_pylist()
    images = run_query(tmp_path / "store", "SELECT path FROM images").to_pylist()
    assert summary.scanned == 2 == summary.encoded + summary.failed
    assert [r["path"] for r in images] + [r["path"] for r in rows] in (
        ["ok.jpg", "garbled.jpg"],
        ["garbled.jpg", "ok.jpg"],
    )


class _Items(torch.utils.data.Dataset[Decoded]):
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files) + 1

    def __getitem__(self, n: int) -> Decoded:
        if n == 2:
            return Decoded(index=99, kind=FailureKind.DECODE_ERROR, message="broken")
        data = self.files[n if n < 2 else n - 1].read_bytes()
        return Decoded(index=n, jpeg=torch.frombuffer(bytearray(data), dtype=torch.uint8))


def test_a_batch_ships_its_jpeg_bytes_as_one_tensor(jpeg_dir):
    files = sorted(jpeg_dir.rglob("*.jpg"))
    loader = torch.utils.data.DataLoader(  # a worker process, shared memory, as in encode
        _Items(files), batch_size=len(files) + 1, num_workers=1, collate_fn=collate_decoded
    )
    (batch,) = list(loader)
    assert all(item.jpeg is None for item in batch.jpegs)  # not shipped one by one ...
    assert batch.jpeg_blob.numel() == sum(p.stat().st_size for p in files)  # ... but as one
    batch.unpack_jpegs()
    assert [item.index for item in batch.jpegs] == [0, 1, *range(3, len(files) + 1)]
    storages = {item.jpeg.untyped_storage().data_ptr() for item in batch.jpegs}
    assert len(storages) == 1  # views into the one received tensor
    for item, path in zip(batch.jpegs, files, strict=True):
        assert item.jpeg is not None and item.jpeg.numpy().tobytes() == path.read_bytes()
    assert [f.index for f in batch.failures] == [99]
    batch.unpack_jpegs()  # a second call changes nothing
    assert batch.jpegs[0].jpeg.numpy().tobytes() == files[0].read_bytes()


def test_the_summary_says_where_the_main_thread_spent_its_time(tmp_path, jpeg_dir, configs):
    summary = encode_images(
        jpeg_dir, tmp_path / "s", configs["vit"], workers=0, jpeg_decode="device"
    )
    assert list(summary.stage_seconds) == list(encode_loop.STAGES)
    assert all(value >= 0 for value in summary.stage_seconds.values())
    assert summary.stage_seconds["model"] > 0 and summary.stage_seconds["writes"] > 0
    # together they are the loop's time: nothing counted twice, nothing much left out
    assert summary.pipeline_seconds - 0.1 <= sum(summary.stage_seconds.values())
    assert sum(summary.stage_seconds.values()) <= summary.pipeline_seconds + 0.01
    # the decoder thread's own clock: it decoded, and that fits inside the loop's time
    assert list(summary.decoder_seconds) == list(encode_loop.DECODER_STAGES)
    assert 0 < summary.decoder_seconds["device_decode"] <= summary.pipeline_seconds
    workers = encode_images(
        jpeg_dir, tmp_path / "w", configs["vit"], workers=0, jpeg_decode="workers"
    )
    assert workers.decoder_seconds == {}  # no decoder thread when the workers decode


def test_an_isolated_decode_ships_a_plain_jpegs_bytes_back(jpeg_dir):
    """After a worker crash its batch is decoded file by file in fresh processes; in
    device mode a plain JPEG comes back as bytes, which must survive the process's exit."""
    work = collect_work(jpeg_dir)
    options = DecodeOptions(lambda image: image, 10**8, None, jpeg_on_device=True)
    files = ImageFiles(os.fsencode(jpeg_dir), work, options)
    jpegs = [n for n in range(len(work)) if work.relpath(n).endswith(b".jpg")]
    for position in jpegs[:3]:
        result = isolated_decode(files, position, timeout=30.0)
        assert result.kind is None, result.message
        expected = (jpeg_dir / os.fsdecode(work.relpath(position))).read_bytes()
        assert result.jpeg is not None and result.jpeg.numpy().tobytes() == expected


def test_a_misspelt_stage_is_an_error_not_a_lost_figure():
    report = encode_loop.LoopReport()
    with pytest.raises(ValueError, match="no stage 'modle'"), report.timing("modle"):
        pass
    with report.timing("waiting_for_model"):
        pass
    assert list(report.decoder_seconds) == ["waiting_for_model"]
    assert list(report.seconds) == list(encode_loop.STAGES)
