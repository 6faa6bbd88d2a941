"""Decode stage, GPU half: plain JPEGs decoded in batches by nvjpeg, resized on the device.

On a GPU machine, 16 cores decode ~1,100 JPEGs/s while nvjpeg decodes 3,000-6,000/s
(BENCHMARKS.md). So workers only read, hash and inspect a plain JPEG (decode.py ships its
bytes) and this stage turns the bytes into model-sized pixels on the device: resize of
the short side (bicubic, antialiased) and a center crop, as open_clip's preprocess does,
resizing only the part of the frame the crop keeps (``kept_input``).
Anything nvjpeg rejects goes to the CPU path (in encode_loop.py: a fresh process with a
deadline, as workers.py isolates crashes), so it still becomes pixels or a failure row
with a reason. Embeddings stay within cosine 0.9994 of the reference.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torchvision
from torchvision.io import ImageReadMode

from meter_batch.ingest.decode import Decoded, DecodedBatch, DecodeOptions, decode_into_result

log = logging.getLogger("meter_batch")
RESIZE_MODES = ("shortest",)  # open_clip preprocess modes this stage reproduces
GROUP = 32  # images per interpolate call: 32 float 1920x1080 frames are ~0.8 GB


def device_jpeg_decoder_available() -> bool:
    """torchvision 0.29 deprecated its image decoders (for TorchCodec); once one is gone,
    encode falls back to the workers instead of failing."""
    return callable(getattr(torchvision.io, "decode_jpeg", None))


@dataclass(frozen=True)
class KeptInput:
    """Along one axis: resize input[start:stop] with ``zoom`` (output pixels per input
    pixel) and the kept outputs begin at index ``first`` of that resize."""

    start: int
    stop: int
    first: int
    zoom: float

    def outputs(self, side: int) -> int:
        """How many outputs to ask for: through the kept ones. One more where that count
        equals the span's length: PyTorch's CPU kernel then copies the axis unresized,
        whatever the scale (its CUDA kernel does not)."""
        count = self.first + side
        return count + 1 if count == self.stop - self.start and self.zoom != 1.0 else count


def max_shift(scale: float) -> float:
    """Output pixels the cropped resize may sample off the whole one and stay within one
    level on noise (the worst case): bicubic near 1:1 follows each pixel, a larger
    downscale averages more of them, so its error falls about as 1/sqrt(scale)."""
    return 0.0025 * math.sqrt(max(scale, 1.0))


def kept_input(n_in: int, n_out: int, side: int) -> KeptInput:
    """The part of an axis of ``n_in`` pixels that a resize to ``n_out`` followed by a
    centre crop of ``side`` reads. The span begins ``first`` outputs before the crop, so
    the bicubic window of every kept output lies inside it; ``first`` is the smallest such
    margin at which the span's integer start falls on the whole resize's output grid
    (within ``max_shift``): then the kept pixels equal the whole resize's within one
    level. ``first == offset`` (start 0) always qualifies."""
    scale = n_in / n_out  # input pixels per output pixel, as interpolate computes it
    offset = round((n_out - side) / 2.0)
    whole = KeptInput(0, n_in, offset, n_out / n_in)
    reach = 2.0 * max(scale, 1.0) + 1  # antialiased bicubic's support, and a pixel
    nearest = math.ceil(reach / scale)
    if offset < nearest:  # too little cropped away to leave a margin
        return whole
    tolerance = max_shift(scale)
    first = next(k for k in range(nearest, offset + 1) if _shift(offset - k, scale) <= tolerance)
    stop = min(n_in, math.ceil((offset + side) * scale + reach))
    return KeptInput(round((offset - first) * scale), stop, first, whole.zoom)


def _shift(outputs: int, scale: float) -> float:
    """In output pixels: how far the nearest whole input pixel lies from output ``outputs``'s
    left edge."""
    return abs(round(outputs * scale) - outputs * scale) / scale


Fallback = Callable[[Decoded], Decoded]  # a rejected JPEG -> pixels or a failure record


class DeviceJpegDecoder:
    """Turns a batch's shipped JPEG bytes into pixels on ``device`` and merges them in."""

    def __init__(
        self,
        device: torch.device,
        side: int,
        cpu_options: DecodeOptions,
        fallback: Fallback | None = None,
    ) -> None:
        self.device, self.side = device, side
        self.cpu_options = replace(cpu_options, jpeg_on_device=False)
        self.fallback = fallback or self._cpu_decode
        # Its own CUDA stream: the model's kernels (another thread, the default stream) and
        # the decoding's then overlap on the GPU, and draining this stream before nvjpeg
        # waits for the decoding's own queued work only, not the model's. Made on first
        # use, on the thread that decodes: creating it starts CUDA, which takes a while.
        self._stream: torch.cuda.Stream | None = None

    def _own_stream(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(self._stream)

    def _ready(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels another stream may read at once: this stream's work on them is done.
        (The reader calls record_stream, so their memory outlives its use there.)"""
        if self._stream is not None:
            self._stream.synchronize()
        return pixels

    def warm_up(self) -> None:
        """Decode one tiny JPEG: the decoder's first call sets up nvjpeg (a second or so),
        which is better overlapped with the workers' start-up than inside the first batch.
        Nothing to set up on a CPU; if it fails, each batch still falls back file by file."""
        if self.device.type != "cuda":
            return
        tiny = torchvision.io.encode_jpeg(torch.zeros((3, 16, 16), dtype=torch.uint8))
        try:
            with self._own_stream():
                self._ready(self.resize_crop(self._decode([tiny])[0][None]))
        except RuntimeError as exc:
            log.warning("the GPU JPEG decoder did not start (%s); files it rejects are "
                        "decoded on the CPU", str(exc).strip()[:200])  # fmt: skip

    def __call__(self, batch: DecodedBatch) -> tuple[DecodedBatch, torch.Tensor]:
        """The batch with every file decoded, and its pixels (N, side, side, 3) on device."""
        batch.unpack_jpegs()
        if not batch.jpegs:  # the workers' pixels: copied on the caller's stream, as before
            return batch, batch.pixels.to(self.device, non_blocking=True)
        with self._own_stream():
            merged, pixels = self._decode_batch(batch)
            return merged, self._ready(pixels)

    def _decode_batch(self, batch: DecodedBatch) -> tuple[DecodedBatch, torch.Tensor]:
        images = self._decode_all([item.jpeg for item in batch.jpegs])  # type: ignore[misc]
        crops = iter(self.resize_crop_all([image for image in images if image is not None]))
        good, failures, pixels = [], list(batch.failures), []
        for item, image in zip(batch.jpegs, images, strict=True):
            crop = next(crops) if image is not None else None
            if crop is not None:
                item.jpeg = None  # decoded: do not keep the bytes
                pixels.append(crop)
                good.append(item)
                continue
            fallback = self.fallback(item)
            item.jpeg = None
            if fallback.pixels is None:
                failures.append(fallback)
            else:
                pixels.append(torch.from_numpy(fallback.pixels).to(self.device))
                fallback.pixels = None
                good.append(fallback)
        stacked = self._stack(batch.pixels, pixels)
        merged = DecodedBatch(
            indices=batch.indices + [item.index for item in good],
            pixels=torch.empty(0),
            good=batch.good + good,
            failures=failures,
        )
        return merged, stacked

    def _decode_all(self, tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One batched nvjpeg call; if any file spoils it, each file alone."""
        if self.device.type == "cuda":
            # torchvision allocates the outputs on the current stream (ours) but nvjpeg
            # writes them from its own stream without waiting for this one: memory freed by
            # work still queued here (the last batch's resize) could be overwritten while
            # being read. Draining the queue first closes that race (pytorch/vision#9606).
            torch.cuda.current_stream(self.device).synchronize()
        try:
            return list(self._decode(tensors))
        except RuntimeError:
            decoded: list[torch.Tensor | None] = []
            for tensor in tensors:
                try:
                    decoded.append(self._decode([tensor])[0])
                except RuntimeError:
                    decoded.append(None)
            return decoded

    def _decode(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        result = torchvision.io.decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        return result if isinstance(result, list) else [result]

    def resize_crop_all(self, images: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """resize_crop of each image, one interpolate call per size (in chunks of
        GROUP): a folder from one camera costs a few calls per batch, not one per image.
        None where the device ran out of memory."""
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for number, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(number)
        for members in groups.values():
            for start in range(0, len(members), GROUP):
                chunk = members[start : start + GROUP]
                try:
                    crops = self.resize_crop(torch.stack([images[n] for n in chunk]))
                except torch.OutOfMemoryError:  # huge photos: these go to the CPU path (None)
                    torch.cuda.empty_cache()
                    continue
                for number, crop in zip(chunk, crops, strict=True):
                    out[number] = crop
        return out

    def resize_crop(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, side, side, 3) uint8: torchvision's Resize(side)
        sizes (int() of the long side) and CenterCrop's offsets, so the crop matches.
        Only the input the kept pixels read is resized (see ``kept_input``): a 16:9 frame
        costs ~60 % of resizing it whole, within one level of doing so."""
        _, _, height, width = images.shape
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.side * long / short)
        size = (self.side, new_long) if height <= width else (new_long, self.side)
        rows = kept_input(height, size[0], self.side)
        cols = kept_input(width, size[1], self.side)
        part = images[:, :, rows.start : rows.stop, cols.start : cols.stop].float()
        # F.interpolate takes a size or a scale, not both; this op (the one it calls) takes
        # both: the part's own size would change the scale and so the pixels
        resized = torch.ops.aten._upsample_bicubic2d_aa(
            part, [rows.outputs(self.side), cols.outputs(self.side)], False, rows.zoom, cols.zoom
        )
        top, left = rows.first, cols.first
        crop = resized[:, :, top : top + self.side, left : left + self.side]
        return crop.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    def _cpu_decode(self, item: Decoded) -> Decoded:
        """In-process fallback (tests, benchmarks); encode isolates it in a process."""
        result = replace(item, jpeg=None, pixels=None)
        data = item.jpeg.numpy().tobytes() if item.jpeg is not None else b""
        decode_into_result(result, data, self.cpu_options)
        return result

    def _stack(self, cpu_batch: torch.Tensor, pixels: list[torch.Tensor]) -> torch.Tensor:
        """The workers' pixels first, then the JPEGs': the order of ``indices``."""
        parts = [cpu_batch.to(self.device, non_blocking=True)] if cpu_batch.numel() else []
        if pixels:
            parts.append(torch.stack(pixels))
        if not parts:
            return torch.empty((0, self.side, self.side, 3), dtype=torch.uint8)
        return torch.cat(parts)
