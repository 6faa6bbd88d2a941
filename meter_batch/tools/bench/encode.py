"""`meter-batch bench encode`: decode capacity, model capacity and end-to-end encode on
one folder, the bound e2e could reach (by what shares hardware: ``_bound``), their
ratio, and peak RSS; on a GPU also the device JPEG decoder's rate alone and during e2e.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from meter_batch.config import BenchEncodeSettings, EncodeConfig
from meter_batch.errors import InputError
from meter_batch.ingest.decode import ImageFiles, split_preprocess
from meter_batch.ingest.encode_loop import LoopPlan, decode_options
from meter_batch.ingest.encode_run import encode
from meter_batch.ingest.gpu_decode import DeviceJpegDecoder
from meter_batch.ingest.scan import WorkList, collect_work
from meter_batch.ingest.workers import LoaderSettings, decoded_batches
from meter_batch.model.encoder import ImageEncoder, plan_device
from meter_batch.model.loading import load_model
from meter_batch.tools.bench.common import peak_rss_mib
from meter_batch.tools.samples import sample_image

MODEL_SECONDS = {True: 5.0, False: 10.0}  # how long model capacity is timed: GPU, CPU


def run(settings: BenchEncodeSettings) -> dict[str, Any]:
    """Decode capacity, model capacity and end-to-end encode on one folder, and the bound
    (`_bound`: shared or separate hardware)."""
    shutil.rmtree(settings.dir / "store", ignore_errors=True)
    config = EncodeConfig(
        **settings.encode_settings(),
        images_dir=settings.images or _generated_images(settings.dir, settings.count),
        store=settings.dir / "store",
        model=settings.model,
    )
    result = _capacities(config)
    summary = encode(config, interactive=False)
    if not summary.encoded or not result["decode_per_s"]:
        raise InputError(f"{config.images_dir} holds no image that decodes: nothing to measure")
    result["e2e_per_s"] = round(summary.encoded / summary.pipeline_seconds, 1)
    result["e2e_wall_per_s"] = summary.images_per_s
    result["images"] = summary.encoded
    result["e2e_stage_seconds"] = summary.stage_seconds
    result["e2e_compiled"] = summary.compiled
    result["e2e_decoder_seconds"] = summary.decoder_seconds
    result["e2e_device_decode_per_s"] = _rate(
        summary.encoded, summary.decoder_seconds.get("device_decode")
    )
    result.update(_bound(result))
    result["peak_rss_mib"] = peak_rss_mib()
    shutil.rmtree(settings.dir / "store", ignore_errors=True)
    return result


def _generated_images(folder: Path, count: int) -> Path:
    images = folder / f"images-{count}"  # kept for the next run of the same count
    if not images.is_dir():
        partial = folder / f"images-{count}.partial"  # an interrupted set is not reused
        shutil.rmtree(partial, ignore_errors=True)
        write_bench_images(partial, count)
        partial.rename(images)
    return images


def _bound(result: dict[str, Any]) -> dict[str, Any]:
    """The rate e2e could reach, by what shares hardware:
    - on a CPU, decoding and the model take turns on the same cores: 1/(1/a + 1/b);
    - with a GPU and the workers decoding, they run on different hardware: min(a, b);
    - with JPEGs decoded on the GPU, the workers' part (read, hash, inspect) runs on the
      CPU, but nvjpeg + resize and the model take turns on the GPU: min(a, 1/(1/d + 1/b)),
      d the device decoding's own rate (bench measures it inside a). e2e above that bound
      would mean the two overlap on the GPU (nvjpeg's hardware engine is not the SMs).
    Every GPU result also carries min(a, b), the bound of separate hardware."""
    decode, model_rate = result["decode_per_s"], result["model_per_s"]
    device_decode = result.get("device_decode_per_s")
    if result["device"] == "cpu":
        rule, bound = "1/(1/decode+1/model): shared CPU", _harmonic(decode, model_rate)
    elif device_decode:
        rule = "min(decode, 1/(1/device_decode+1/model)): JPEG decoding shares the GPU"
        bound = min(decode, _harmonic(device_decode, model_rate))
    else:
        rule, bound = "min(decode, model): separate hardware", min(decode, model_rate)
    figures = {"bound": rule, "bound_per_s": round(bound, 1)}
    figures["ratio"] = round(result["e2e_per_s"] / bound, 3)
    if result["device"] != "cpu":
        figures["ratio_to_min_decode_model"] = round(
            result["e2e_per_s"] / min(decode, model_rate), 3
        )
    return figures


def _harmonic(first: float, second: float) -> float:
    """The rate of two stages that take turns on one resource."""
    return 1 / (1 / first + 1 / second)


def _rate(images: int, seconds: float | None) -> float | None:
    return round(images / seconds, 1) if seconds else None


def table(r: dict[str, Any]) -> str:
    """The figures of one `run` result, one per line, for a person to read."""
    rows = [
        ("model / device / path", f"{r['model']} / {r['device']} {r['precision']} / {r['path']}"),
        ("JPEG decoding", f"{r['jpeg_decode']}, {r['workers']} workers, batch {r['batch_size']}"),
        ("torch.compile", _compiled(r)),
        ("(a) decode img/s", f"{r['decode_per_s']:,.1f} ({r['decode_per_core_per_s']:,.1f}/core)"),
        *_device_decode_rows(r),
        ("plain PIL->preprocess loop", f"{r['plain_pil_open_clip_loop_per_s']:,.1f} img/s, 1 core"),
        ("(b) model img/s", f"{r['model_per_s']:,.1f}"),
        ("(c) end-to-end img/s", f"{r['e2e_per_s']:,.1f} ({r['images']:,} images)"),
        ("bound", f"{r['bound_per_s']:,.1f} = {r['bound']}"),
        ("ratio e2e / bound", f"{r['ratio']:.3f}{_above_bound_note(r['ratio'])}"),
        *_separate_ratio_row(r),
        ("e2e main thread, seconds", _stages(r["e2e_stage_seconds"])),
        *_decoder_thread_row(r),
        ("peak RSS MiB", f"{r['peak_rss_mib']:,.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _above_bound_note(ratio: float) -> str:
    """e2e well above its bound: a capacity was measured low, most often because another
    process had the cores then (each is timed once, for seconds)."""
    if ratio <= 1.15:
        return ""
    return "  (above 1: a capacity measured low, e.g. the machine was busy; run it again)"


def _device_decode_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """GPU JPEG decoding alone (inside a) and while the model ran (in e2e)."""
    if not r.get("device_decode_per_s"):
        return []
    alone, during = r["device_decode_per_s"], r.get("e2e_device_decode_per_s")
    return [
        ("(d) device decode img/s", f"{alone:,.1f} (GPU decoder stage alone, inside a)"),
        ("    during e2e", f"{during:,.1f}" if during else "-"),
    ]


def _separate_ratio_row(r: dict[str, Any]) -> list[tuple[str, str]]:
    if "ratio_to_min_decode_model" not in r or r["bound"].startswith("min(decode, model)"):
        return []
    return [("ratio e2e / min(a, b)", f"{r['ratio_to_min_decode_model']:.3f}")]


def _decoder_thread_row(r: dict[str, Any]) -> list[tuple[str, str]]:
    seconds = r.get("e2e_decoder_seconds")
    return [("e2e decoder thread, seconds", _stages(seconds))] if seconds else []


def _compiled(r: dict[str, Any]) -> str:
    if not r["compile"]:
        return "no"
    said = {True: "compiled", False: "not compiled (see the log)"}
    return f"asked: model capacity {said[r['model_compiled']]}, e2e {said[r['e2e_compiled']]}"


def _stages(seconds: dict[str, float]) -> str:
    return ", ".join(f"{stage} {value:.2f}" for stage, value in seconds.items())


def _capacities(config: EncodeConfig) -> dict[str, Any]:
    loaded = load_model(config.model)
    stage = split_preprocess(loaded.reference_preprocess)
    device = plan_device(config.device, config.precision)
    work = collect_work(config.images_dir)
    options = decode_options(config, loaded, stage, device)
    decoded, decode_s, device_s = _decode_capacity(config, work, LoopPlan(stage, options, device))
    compile_batch = config.batch_size if config.compile else None
    encoder = ImageEncoder(
        loaded.model, stage.mean, stage.std, device, compile_batch, loaded.architecture
    )
    plain = _plain_loop_rate(config.images_dir, work, loaded.reference_preprocess)
    return {
        "model": config.model.name,
        "device": str(device.device),
        "precision": device.precision,
        "path": "exact" if config.exact else "fast",
        "jpeg_decode": "device" if options.jpeg_on_device else "workers",
        "compile": config.compile,
        "workers": config.workers,
        "batch_size": config.batch_size,
        "decode_per_s": round(decoded / decode_s, 1),
        "decode_per_core_per_s": round(decoded / decode_s / max(1, config.workers), 1),
        "device_decode_per_s": _rate(decoded, device_s) if options.jpeg_on_device else None,
        "plain_pil_open_clip_loop_per_s": round(plain, 1),
        "model_per_s": round(_model_rate(encoder, stage.short_side, config.batch_size), 1),
        "model_compiled": encoder.runs_compiled,
    }


def _decode_capacity(
    config: EncodeConfig, work: WorkList, plan: LoopPlan
) -> tuple[int, float, float]:
    """Images decoded by the workers (and the GPU JPEG decoder when it is on), all the
    seconds that took, and the seconds inside the device decoder (nvjpeg + resize)."""
    stage, options, device = plan.stage, plan.options, plan.device
    dataset = ImageFiles(os.fsencode(config.images_dir.resolve()), work, options)
    settings = LoaderSettings(
        config.batch_size, config.workers, device.is_cuda, config.decode_timeout
    )
    on_device = DeviceJpegDecoder(device.device, stage.short_side, options)
    if options.jpeg_on_device:  # nvjpeg's one-off set-up is not decode capacity
        on_device.warm_up()
    decoded, device_s = 0, 0.0
    started = time.perf_counter()
    for batch in decoded_batches(dataset, list(range(len(work))), settings):
        batch_started = time.perf_counter()
        merged, _ = on_device(batch)  # plain JPEGs decode on the GPU when it has one
        device_s += time.perf_counter() - batch_started  # its stream is synchronized
        decoded += len(merged.indices)
    if device.is_cuda:
        torch.cuda.synchronize()
    return decoded, max(time.perf_counter() - started, 1e-9), device_s


def _plain_loop_rate(root: Path, work: WorkList, preprocess: Any, limit: int = 150) -> float:
    """The users' loop, one core: Image.open -> open_clip preprocess (no model)."""
    folder = os.fsencode(root.resolve())
    count = min(limit, len(work))
    started = time.perf_counter()
    for position in range(count):
        try:
            with Image.open(os.path.join(folder, work.relpath(position))) as image:
                preprocess(image)
        except Exception:  # the users' loop would have crashed here: not counted
            continue
    return count / (time.perf_counter() - started)


def _model_rate(encoder: ImageEncoder, side: int, batch: int) -> float:
    """encode_image on uint8 batches already on the device (normalization included)."""
    pixels = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8)
    pixels = pixels.to(encoder.plan.device)
    cuda = encoder.plan.is_cuda
    encoder(pixels)  # warm-up (cudnn autotune, allocator)
    rounds, started = 0, time.perf_counter()
    while rounds < 3 or time.perf_counter() - started < MODEL_SECONDS[cuda]:
        encoder(pixels)
        rounds += 1
        if cuda:
            torch.cuda.synchronize()
    return batch * rounds / (time.perf_counter() - started)


def write_bench_images(folder: Path, count: int) -> None:
    """Half 640x480, half 1920x1080; 4 in 5 JPEG, 1 in 5 PNG (deterministic)."""
    rng = random.Random(7)
    for number in range(count):
        sub = folder / f"{number // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        size = (640, 480) if number % 2 == 0 else (1920, 1080)
        image = sample_image(rng, size)
        if number % 5 == 4:
            image.save(sub / f"{number:06d}.png", compress_level=1)
        else:
            image.save(sub / f"{number:06d}.jpg", quality=90)
