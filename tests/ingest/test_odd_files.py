"""Every odd file ends as an embedding with correct pixels, or as a failure with a kind."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meter_batch.config import ModelSpec
from meter_batch.ingest import decode
from meter_batch.ingest.decode import (
    Decoded,
    PixelStage,
    _read_stable,
    classify_decode_error,
    split_preprocess,
)
from meter_batch.ingest.pixels import BACKGROUND, normalize_image
from meter_batch.model.loading import LoadedModel, load_model
from meter_batch.store.catalog import run_query
from meter_batch.store.records import FailureKind
from tests.helpers import arrow_picture, encode_images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def ramp16() -> np.ndarray:
    return np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """One or more files of each odd case; the expected outcome is in each test."""
    root = tmp_path / "odd"
    root.mkdir()
    good = io.BytesIO()
    arrow_picture().save(good, "JPEG", quality=95)
    (root / "ok.jpg").write_bytes(good.getvalue())
    (root / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "error-page.jpg").write_text("<!DOCTYPE html><html>502 Bad Gateway</html>")
    (root / "panorama.png").write_bytes(png_bytes(30000, 30000, 8, 2, b""))
    (root / "iphone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    corrupt = bytearray(_png(arrow_picture()))
    at = corrupt.find(b"IDAT") + 12
    corrupt[at : at + 24] = b"\x00" * 24
    (root / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "really-a-png.jpg").write_bytes(_png(arrow_picture()))
    # refuses seek(). Saved under its own suffix, then renamed: Pillow's SPIDER saver
    # registers the file's suffix for itself, and every later `.jpg` save in the process
    # (other tests' fixtures) would write SPIDER files
    arrow_picture().convert("L").save(root / "spider-single.spi", "SPIDER")
    (root / "spider-single.spi").rename(root / "spider-single.jpg")
    for orientation, rotate in ((6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        arrow_picture().transpose(rotate).save(root / f"exif-{orientation}.png", exif=exif)
    arrow_picture().save(root / "upright.png")
    Image.fromarray(ramp16()).save(root / "gray16.png")
    Image.fromarray(ramp16()).save(root / "gray16.tif")
    Image.fromarray((ramp16() / 65535).astype(np.float32)).save(root / "float32.tif")
    rgba = Image.new("RGBA", (64, 64), (200, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half fully transparent, hidden black
    rgba.save(root / "transparent.png")
    la = Image.new("LA", (64, 64), (90, 255))
    la.paste((0, 0), (0, 0, 64, 32))
    la.save(root / "gray-alpha.png")
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 0, 180, 0] + [0] * 762)
    palette.paste(0, (0, 0, 32, 64))
    palette.save(root / "palette.png", transparency=0)
    frames = [Image.new("RGB", (48, 32), c) for c in ("red", "blue", "green")]
    for name, fmt in (("anim.gif", "GIF"), ("anim.webp", "WEBP"), ("anim.png", "PNG")):
        frames[0].save(root / name, fmt, save_all=True, append_images=frames[1:], duration=80)
    cmyk = arrow_picture().convert("CMYK")
    cmyk.save(root / "cmyk.jpg", "JPEG", quality=95)
    sjis = "メーター".encode("shift_jis") + b".png"
    with open(os.path.join(os.fsencode(root), sjis), "wb") as handle:
        handle.write(_png(arrow_picture()))
    return root


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


EXPECTED_FAILURES = {
    "truncated.jpg": "truncated",
    "empty.png": "unidentified",
    "error-page.jpg": "unidentified",
    "panorama.png": "too_large",
    "corrupt.png": "decode_error",
}


@pytest.mark.parametrize("jpeg_decode", ["workers", "device"])
def test_every_file_is_encoded_or_a_failure_with_a_kind(tmp_path, corpus, configs, jpeg_decode):
    summary = encode_images(
        corpus, tmp_path / "store", configs["vit"], workers=0, jpeg_decode=jpeg_decode
    )
    files = len(os.listdir(corpus))
    assert summary.scanned == files == summary.encoded + summary.failed
    failures = run_query(tmp_path / "store", "SELECT path, kind, message FROM failures")
    kinds = {r["path"]: r["kind"] for r in failures.to_pylist()}
    # the fake HEIC is garbage: unreadable with the heic extra, unsupported without it
    heic = "unidentified" if _has_heif() else "unsupported_format"
    assert kinds == {**EXPECTED_FAILURES, "iphone.heic": heic}
    images = run_query(tmp_path / "store", "SELECT path, path_bytes, frames FROM images")
    rows = {r["path"]: r for r in images.to_pylist()}
    assert len(rows) == files - len(kinds)
    assert rows["really-a-png.jpg"]["frames"] == 1
    assert rows["spider-single.jpg"]["frames"] == 1
    assert {rows[n]["frames"] for n in ("anim.gif", "anim.webp", "anim.png")} == {3}
    sjis = [r for r in rows.values() if r["path_bytes"] is not None]
    assert [r["path_bytes"] for r in sjis] == ["メーター".encode("shift_jis") + b".png"]
    assert "\ufffd" in sjis[0]["path"]
    again = encode_images(
        corpus, tmp_path / "store", configs["vit"], workers=0, jpeg_decode=jpeg_decode
    )
    # raw names match; only the over-cap panorama is tried again (the cap may change)
    assert (again.skipped, again.encoded, again.failed) == (files - 1, 0, 1)


def _has_heif() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_pixel_cap_is_enforced_in_worker_processes(tmp_path, corpus, configs):
    summary = encode_images(corpus, tmp_path / "store", configs["vit"], workers=2, max_pixels=5000)
    failures = run_query(tmp_path / "store", "SELECT path, kind FROM failures").to_pylist()
    too_large = {r["path"] for r in failures if r["kind"] == "too_large"}
    assert "ok.jpg" in too_large and "panorama.png" in too_large  # 96x64 > 5000 px
    assert "anim.gif" not in too_large  # 48x32 = 1536 px
    assert summary.scanned == summary.encoded + summary.failed


def _pixel_stage(configs: dict[str, Path]) -> tuple[LoadedModel, PixelStage]:
    loaded = load_model(ModelSpec(str(configs["vit"]), "none"))
    return loaded, split_preprocess(loaded.reference_preprocess)


def _pixels(path: Path, stage: PixelStage) -> np.ndarray:
    with Image.open(path) as image:
        image.seek(0)
        return np.asarray(stage.transform(normalize_image(image)), dtype=np.float64)


def test_transparency_is_composited_on_the_documented_background(corpus, configs):
    _, stage = _pixel_stage(configs)
    for name, opaque in (("transparent.png", (200, 0, 0)), ("palette.png", (0, 180, 0))):
        pixels = _pixels(corpus / name, stage)
        assert np.abs(pixels[:, :20] - BACKGROUND).max() <= 1, name  # left: background
        assert np.abs(pixels[:, -20:] - opaque).max() <= 1, name
    gray = _pixels(corpus / "gray-alpha.png", stage)
    assert np.abs(gray[:20] - BACKGROUND).max() <= 1 and np.abs(gray[-20:] - 90).max() <= 1


def test_high_bit_depth_is_scaled_not_clipped(corpus, configs):
    _, stage = _pixel_stage(configs)
    expected = np.asarray(
        stage.transform(Image.fromarray((ramp16() / 257).round().astype(np.uint8)))
    )
    for name in ("gray16.png", "gray16.tif", "float32.tif"):
        pixels = _pixels(corpus / name, stage)
        assert abs(pixels.mean() - 127.5) < 3, name  # a clipped ramp would average ~254
        assert np.abs(pixels - expected).max() <= 2, name


def test_exif_rotation_embeds_like_the_hand_rotated_image(tmp_path, corpus, configs):
    encode_images(corpus, tmp_path / "store", configs["vit"], workers=0)
    rows = run_query(tmp_path / "store", "SELECT path, width, height, embedding FROM images")
    vectors = {r["path"]: np.asarray(r["embedding"]) for r in rows.to_pylist()}
    for name in ("exif-6.png", "exif-8.png"):
        cosine = vectors[name] @ vectors["upright.png"]
        assert cosine > 0.9999, (name, cosine)
    # and the stored file was really rotated: its raw pixels differ from the upright ones
    raw = np.asarray(Image.open(corpus / "exif-6.png"))
    assert raw.shape[:2] == (96, 64)


def test_animated_images_embed_their_first_frame(corpus, configs):
    _, stage = _pixel_stage(configs)
    for name in ("anim.gif", "anim.webp", "anim.png"):
        pixels = _pixels(corpus / name, stage)
        assert np.abs(pixels.mean(axis=(0, 1)) - (255, 0, 0)).max() < 8, name


def test_cmyk_jpeg_comes_out_as_rgb(corpus, configs):
    _, stage = _pixel_stage(configs)
    pixels = _pixels(corpus / "cmyk.jpg", stage)
    reference = np.asarray(stage.transform(arrow_picture()), dtype=np.float64)
    assert np.abs(pixels - reference).mean() < 6


def test_heic_decodes_with_the_extra(tmp_path, configs):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.new("RGB", (80, 60), (10, 200, 30)).save(folder / "IMG_0001.HEIC", "HEIF")
    summary = encode_images(folder, tmp_path / "store", configs["vit"], workers=0)
    assert (summary.encoded, summary.failed) == (1, 0)


def test_heic_without_the_extra_is_unsupported_format(monkeypatch):
    data = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64
    error = Image.UnidentifiedImageError("cannot identify image file")
    monkeypatch.setitem(decode._optional, "heif", False)
    assert classify_decode_error(error, data) == (
        FailureKind.UNSUPPORTED_FORMAT,
        "HEIF/AVIF image (brand 'heic') and no decoder for it: install the extra meter_batch[heic]",
    )
    monkeypatch.setitem(decode._optional, "heif", True)
    assert classify_decode_error(error, data)[0] == FailureKind.UNIDENTIFIED


def test_a_file_changing_while_read_is_unstable(tmp_path, monkeypatch):
    path = tmp_path / "growing.jpg"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat
    calls = {"n": 0}

    def fstat(fd):
        calls["n"] += 1
        result = real_fstat(fd)
        if calls["n"] == 2:  # the second look, after reading, sees a bigger file
            values = list(result)
            values[6] += 10  # st_size
            return os.stat_result(values)
        return result

    monkeypatch.setattr(os, "fstat", fstat)
    result = Decoded(0)
    assert _read_stable(os.fsencode(path), result) is None
    assert result.kind == FailureKind.UNSTABLE and "changed while being read" in result.message


def test_vanished_and_unreadable_files_are_failures(tmp_path, image_dir, configs, monkeypatch):
    images, relpaths = image_dir
    import meter_batch.ingest.encode_run as pipeline

    real_collect = pipeline.collect_work

    def collect_then_delete(root):
        work = real_collect(root)
        (images / relpaths[0]).unlink()  # gone between the scan and the read
        return work

    real_open = open

    def guarded_open(path, *args, **kwargs):
        if isinstance(path, bytes) and path.endswith(os.fsencode(relpaths[1])):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "collect_work", collect_then_delete)
    monkeypatch.setattr("builtins.open", guarded_open)
    summary = encode_images(images, tmp_path / "store", configs["vit"], workers=0)
    monkeypatch.undo()
    kinds = run_query(tmp_path / "store", "SELECT path, kind FROM failures").to_pylist()
    assert {r["path"]: r["kind"] for r in kinds} == {
        relpaths[0]: "vanished",
        relpaths[1]: "permission_denied",
    }
    assert (summary.encoded, summary.failed) == (12, 2)


def test_a_worker_killed_mid_batch_costs_only_its_culprit(
    tmp_path, image_dir, configs, monkeypatch
):
    images, relpaths = image_dir
    monkeypatch.setenv("METER_BATCH_DECODE_CRASH", relpaths[5])
    summary = encode_images(images, tmp_path / "store", configs["vit"], workers=2, batch_size=3)
    assert (summary.encoded, summary.failed) == (13, 1)
    failure = run_query(tmp_path / "store", "SELECT path, kind, message FROM failures").to_pylist()
    assert failure == [
        {
            "path": relpaths[5],
            "kind": "decode_error",
            "message": "the decoder process died (signal 11)",
        }
    ]
    assert len(run_query(tmp_path / "store", "SELECT path FROM images")) == 13


def test_a_hanging_decoder_times_out_and_the_run_goes_on(tmp_path, image_dir, configs, monkeypatch):
    images, relpaths = image_dir
    monkeypatch.setenv("METER_BATCH_DECODE_HANG", relpaths[2])
    summary = encode_images(
        images, tmp_path / "store", configs["vit"], workers=2, batch_size=2, decode_timeout=1.5
    )
    assert (summary.encoded, summary.failed) == (13, 1)
    failure = run_query(tmp_path / "store", "SELECT path, kind, message FROM failures").to_pylist()
    assert failure[0]["path"] == relpaths[2] and failure[0]["kind"] == "decode_error"
    assert "timeout" in failure[0]["message"]


def test_eps_without_ghostscript_is_unsupported_format():
    error = OSError("Unable to locate Ghostscript on paths")
    kind, _ = classify_decode_error(error, b"%!PS-Adobe-3.0 EPSF-3.0")
    assert kind == FailureKind.UNSUPPORTED_FORMAT


def test_failures_that_depend_on_the_machine_are_retried(tmp_path, corpus, configs):
    first = encode_images(corpus, tmp_path / "store", configs["vit"], workers=0, max_pixels=5000)
    assert first.failed > len(EXPECTED_FAILURES)  # the small cap fails ordinary files too
    second = encode_images(corpus, tmp_path / "store", configs["vit"], workers=0)  # the default cap
    failures = run_query(tmp_path / "store", "SELECT path, kind FROM failures").to_pylist()
    assert {r["path"] for r in failures if r["kind"] == "too_large"} == {"panorama.png"}
    assert second.encoded == first.failed - len(failures)


def test_non_utf8_names_under_a_path_prefix(tmp_path, corpus, configs):
    first = encode_images(
        corpus, tmp_path / "store", configs["vit"], workers=0, path_prefix="site-a/"
    )
    again = encode_images(
        corpus, tmp_path / "store", configs["vit"], workers=0, path_prefix="site-a/"
    )
    # every file is skipped but the over-cap one, which is retried (the cap may change)
    assert (again.encoded, again.failed, again.skipped) == (0, 1, first.scanned - 1)


def test_a_trns_colour_key_is_transparent(tmp_path, configs):
    _, stage = _pixel_stage(configs)
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((200, 0, 0), (32, 0, 64, 64))
    image.save(tmp_path / "keyed.png", transparency=(0, 0, 0))
    pixels = _pixels(tmp_path / "keyed.png", stage)
    assert np.abs(pixels[:, :20] - BACKGROUND).max() <= 1
    assert np.abs(pixels[:, -20:] - (200, 0, 0)).max() <= 1


def test_pillows_bomb_warning_does_not_reach_the_terminal_in_the_main_process(
    tmp_path, monkeypatch
):
    """With --workers 0 (and for an image query) files decode in the main process, where
    PIL's own bomb check stays on: a file above its warning size must not print
    DecompressionBombWarning; our max_pixels cap is what decides."""
    import warnings

    from meter_batch.ingest.decode import DecodeOptions, configure_decoder_process, decode_file

    configure_decoder_process(in_worker=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 40 = 1600: warns, < 2x
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would now be an exception
        decoded = decode_file(bytes(path), 0, DecodeOptions(lambda image: image, 10**9))
    assert (decoded.kind, decoded.width, decoded.height) == (None, 40, 40)
    assert decoded.pixels is not None and decoded.pixels[0, 0].tolist() == [200, 10, 10]
