"""The encode loop: decoded batches (workers, and plain JPEGs on the GPU) overlapped
with the model, each stage timed, so a run can say which stage limits it.

On a GPU the first batch decodes while the model moves to the device and warms up
(`_start_concurrently`), and the next batches' GPU decoding runs on a thread ahead of
the model (`prefetch`). The main thread's clock (`LoopReport`) says how long it waited
for decoding, ran the model and wrote; the decoder thread's says the same of nvjpeg.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from meter_batch.config import EncodeConfig
from meter_batch.ingest.decode import DecodedBatch, DecodeOptions, ImageFiles, PixelStage
from meter_batch.ingest.gpu_decode import (
    RESIZE_MODES,
    DeviceJpegDecoder,
    device_jpeg_decoder_available,
)
from meter_batch.ingest.scan import WorkList
from meter_batch.ingest.workers import LoaderSettings, decoded_batches, isolated_decode
from meter_batch.model.encoder import DevicePlan, ImageEncoder
from meter_batch.model.loading import LoadedModel
from meter_batch.prefetch import prefetch

log = logging.getLogger("meter_batch")


STAGES = ("start", "waiting_for_decode", "model", "writes")  # the main thread's
DECODER_STAGES = ("waiting_for_workers", "device_decode", "waiting_for_model")  # GPU decoder's


@dataclass(frozen=True)
class LoopPlan:
    """How the loop turns files into embeddings: open_clip's pixel stage (its CPU half and
    the constants of its device half), the workers' decode options, the device."""

    stage: PixelStage
    options: DecodeOptions
    device: DevicePlan


@dataclass(frozen=True)
class LoopWork:
    """Which files: positions into the walk's WorkList, in the order to encode them."""

    files: WorkList
    positions: list[int]


@dataclass
class LoopReport:
    """What the encode loop reports: seconds its main thread spent per stage (and the GPU
    decoder thread, when JPEGs are decoded there), and whether the model ran compiled
    (asked for, enough images, and compiling worked)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    decoder_seconds: dict[str, float] = field(default_factory=dict)
    compiled: bool = False

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        """Adds the block's seconds to ``stage``: a main-thread stage or a decoder one."""
        if stage not in STAGES and stage not in DECODER_STAGES:
            raise ValueError(f"no stage {stage!r}")  # a typo must not vanish from the report
        clock = self.seconds if stage in STAGES else self.decoder_seconds
        started = time.perf_counter()
        try:
            yield
        finally:
            clock[stage] = clock.get(stage, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {stage: round(value, 3) for stage, value in self.seconds.items()}

    def decoder_rounded(self) -> dict[str, float]:
        return {stage: round(value, 3) for stage, value in self.decoder_seconds.items()}


def encoded_batches(
    config: EncodeConfig, loaded: LoadedModel, plan: LoopPlan, work: LoopWork, report: LoopReport
) -> Iterator[tuple[DecodedBatch, np.ndarray | None]]:
    """Each decoded batch with its embeddings (None when every file in it failed)."""
    if not work.positions:
        return
    files = ImageFiles(os.fsencode(config.images_dir.resolve()), work.files, plan.options)
    settings = LoaderSettings(
        config.batch_size, config.workers, plan.device.is_cuda, config.decode_timeout
    )
    batches = decoded_batches(files, work.positions, settings)
    on_device = _device_decoder(config, files, plan)
    compile_it = _worth_compiling(config, len(work.positions))
    with report.timing("start"):  # model to the device and warm, first batch decoded
        encoder, first = _start_concurrently(
            _Start(loaded, plan, config.batch_size, compile_it),
            batches,
            on_device if plan.options.jpeg_on_device else None,
        )
    if first is None:
        return
    pending = itertools.chain([first], batches)
    decoded: Iterator[tuple[DecodedBatch, torch.Tensor]] = (on_device(b) for b in pending)
    if plan.options.jpeg_on_device:  # the next batches' GPU decoding overlaps model, writes
        decoded = prefetch(_timed_device_decoding(pending, on_device, report), depth=2)
    yield from _timed_encoding(decoded, encoder, report)


def _timed_device_decoding(
    batches: Iterator[DecodedBatch], on_device: DeviceJpegDecoder, report: LoopReport
) -> Iterator[tuple[DecodedBatch, torch.Tensor]]:
    """The decoder thread's loop, timed: device decoding's rate while the model runs,
    against its rate alone (`bench encode`), says how much the two slow each other."""
    while True:
        with report.timing("waiting_for_workers"):
            batch = next(batches, None)
        if batch is None:
            return
        with report.timing("device_decode"):  # with any rejected JPEG's CPU fallback
            decoded = on_device(batch)
        with report.timing("waiting_for_model"):  # prefetch's queue is full: the model limits
            yield decoded


def _device_decoder(config: EncodeConfig, files: ImageFiles, plan: LoopPlan) -> DeviceJpegDecoder:
    """Moves the workers' pixels to the device, and decodes shipped JPEGs there."""
    cpu_files = ImageFiles(files.root, files.work, replace(plan.options, jpeg_on_device=False))
    return DeviceJpegDecoder(
        plan.device.device,
        plan.stage.short_side,
        plan.options,
        # a JPEG nvjpeg rejects is odd: decode it where a crash or a hang costs only it
        lambda item: isolated_decode(cpu_files, item.index, config.decode_timeout),
    )


def _timed_encoding(
    decoded: Iterator[tuple[DecodedBatch, torch.Tensor]], encoder: ImageEncoder, report: LoopReport
) -> Iterator[tuple[DecodedBatch, np.ndarray | None]]:
    while True:
        with report.timing("waiting_for_decode"):
            item = next(decoded, None)
        if item is None:
            return
        batch, pixels = item
        with report.timing("model"):
            embeddings = encoder(pixels) if batch.indices else None
        report.compiled = encoder.runs_compiled
        yield batch, embeddings


COMPILE_MIN_BATCHES = 4


def _worth_compiling(config: EncodeConfig, images: int) -> bool:
    """Only full batches run compiled, and compiling costs seconds (cached) to ~20 s
    (cold): a run of a few batches gains nothing from it."""
    if not config.compile:
        return False
    if images >= COMPILE_MIN_BATCHES * config.batch_size:
        return True
    log.info("not compiling: %d images are fewer than %d full batches of %d",
             images, COMPILE_MIN_BATCHES, config.batch_size)  # fmt: skip
    return False


def decode_options(
    config: EncodeConfig, loaded: LoadedModel, stage: PixelStage, device: DevicePlan
) -> DecodeOptions:
    """The fast path's DCT scaling unless exact; JPEGs on the device where that pays."""
    on_device = config.jpeg_decode == "device" or (
        config.jpeg_decode == "auto" and device.is_cuda and not config.exact
    )
    if on_device and not device_decoder_fits(dict(loaded.identity.preprocess)):
        on_device = False
    draft_to = None if config.exact else stage.short_side
    return DecodeOptions(
        stage.transform, config.max_pixels, draft_to, on_device, thumbnails=config.thumbnails
    )


@dataclass(frozen=True)
class _Start:
    """What the encoder is made of: the model, where and how it runs, its batch size."""

    loaded: LoadedModel
    plan: LoopPlan
    batch_size: int
    compile_it: bool  # compiled for full batches


def _start_concurrently(
    start: _Start,
    batches: Iterator[DecodedBatch],
    decoder: DeviceJpegDecoder | None,  # when it decodes JPEGs: its first call is slow
) -> tuple[ImageEncoder, DecodedBatch | None]:
    """Move the model to the device (and warm a GPU and its JPEG decoder up) while the
    first batch decodes.

    Worker start-up, the first decode, the weight transfer and CUDA's first-call set-up
    each take up to a second; overlapped instead of added, they cost a short run much less.
    """

    def ready() -> ImageEncoder:
        encoder = _ready_encoder(start)
        if decoder is not None:
            decoder.warm_up()
        return encoder

    with ThreadPoolExecutor(1, thread_name_prefix="model-start") as pool:
        pending = pool.submit(ready)
        first = next(batches, None)
        return pending.result(), first


def device_decoder_fits(cfg: dict[str, Any]) -> bool:
    """Whether gpu_decode reproduces this preprocessing (and torchvision still has it)."""
    size = cfg.get("size", 224)
    square = isinstance(size, int) or len(set(size)) == 1
    mode, interpolation = cfg.get("resize_mode", "shortest"), cfg.get("interpolation", "bicubic")
    fits = square and mode in RESIZE_MODES and interpolation == "bicubic"
    if fits and device_jpeg_decoder_available():
        return True
    log.info(
        "JPEGs are decoded by the workers: the device decoder does not reproduce size %r, "
        "resize_mode %r, interpolation %r, or torchvision has no decode_jpeg",
        size,
        mode,
        interpolation,
    )
    return False


def _ready_encoder(start: _Start) -> ImageEncoder:
    """The encoder, warmed up on a GPU: CUDA's first-call set-up, compiling when asked, and
    a model whose outputs are NaN or inf refused (ModelError) before the first batch.
    (On a CPU a warm-up batch costs as much as a real one: it compiles on the first, and
    the encoder checks every batch's embeddings anyway, the first before it is written.)"""
    stage, device = start.plan.stage, start.plan.device
    compile_batch = start.batch_size if start.compile_it else None
    name = start.loaded.architecture
    encoder = ImageEncoder(start.loaded.model, stage.mean, stage.std, device, compile_batch, name)
    if device.is_cuda:
        encoder.warm_up(start.batch_size, stage.short_side)
    return encoder
