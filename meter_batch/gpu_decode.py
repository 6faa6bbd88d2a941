"""Decode stage, GPU half: plain JPEGs decoded in batches by nvjpeg, resized on the device.

On a GPU machine, 16 cores decode ~1,100 JPEGs/s while nvjpeg decodes 3,000-6,000/s
(BENCHMARKS.md). So workers only read, hash and inspect a plain JPEG (decode.py ships its
bytes) and this stage turns the bytes into model-sized pixels on the device: resize of
the short side (bicubic, antialiased) and a center crop, as open_clip's preprocess does.
Anything nvjpeg rejects is decoded by the CPU path here, so it still becomes pixels or a
failure row with a reason. Embeddings stay within cosine 0.9994 of the reference.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import ImageReadMode

from meter_batch.decode import Decoded, DecodedBatch, DecodeOptions, decode_into_result

RESIZE_MODES = ("shortest",)  # open_clip preprocess modes this stage reproduces


class DeviceJpegDecoder:
    """Turns a batch's shipped JPEG bytes into pixels on ``device`` and merges them in."""

    def __init__(self, device: torch.device, side: int, cpu_options: DecodeOptions) -> None:
        self.device, self.side = device, side
        self.cpu_options = replace(cpu_options, jpeg_on_device=False)

    def __call__(self, batch: DecodedBatch) -> tuple[DecodedBatch, torch.Tensor]:
        """The batch with every file decoded, and its pixels (N, side, side, 3) on device."""
        if not batch.jpegs:
            return batch, batch.pixels.to(self.device, non_blocking=True)
        images = self._decode_all([item.jpeg for item in batch.jpegs])
        good, failures, pixels = [], list(batch.failures), []
        for item, image in zip(batch.jpegs, images, strict=True):
            if image is not None:
                pixels.append(self.resize_crop(image))
                good.append(item)
                continue
            fallback = self._cpu_decode(item)
            if fallback.pixels is None:
                failures.append(fallback)
            else:
                pixels.append(torch.from_numpy(fallback.pixels).to(self.device))
                good.append(fallback)
        for item in good:
            item.jpeg = b""  # decoded: do not keep the bytes
        stacked = self._stack(batch.pixels, pixels)
        merged = DecodedBatch(
            indices=batch.indices + [item.index for item in good],
            pixels=torch.empty(0),
            good=batch.good + good,
            failures=failures,
        )
        return merged, stacked

    def _decode_all(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        """One batched nvjpeg call; if any file spoils it, each file alone."""
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
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

    def resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (side, side, 3) uint8: torchvision's Resize(side) sizes
        (int() of the long side) and CenterCrop's offsets, so the crop window matches."""
        _, height, width = image.shape
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.side * long / short)
        size = (self.side, new_long) if height <= width else (new_long, self.side)
        resized = F.interpolate(
            image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False
        )[0]
        top = round((size[0] - self.side) / 2.0)
        left = round((size[1] - self.side) / 2.0)
        crop = resized[:, top : top + self.side, left : left + self.side]
        return crop.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)

    def _cpu_decode(self, item: Decoded) -> Decoded:
        result = replace(item, jpeg=b"", pixels=None)
        decode_into_result(result, item.jpeg, self.cpu_options)
        return result

    def _stack(self, cpu_batch: torch.Tensor, pixels: list[torch.Tensor]) -> torch.Tensor:
        """The workers' pixels first, then the JPEGs': the order of ``indices``."""
        parts = [cpu_batch.to(self.device, non_blocking=True)] if cpu_batch.numel() else []
        if pixels:
            parts.append(torch.stack(pixels))
        if not parts:
            return torch.empty((0, self.side, self.side, 3), dtype=torch.uint8)
        return torch.cat(parts)
