"""uint8 pixel batches -> L2-normalized float16 embeddings, on the chosen device."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from meter_batch.errors import ConfigError
from meter_batch.model.loading import LoadedModel

log = logging.getLogger("meter_batch")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DevicePlan:
    """Where and how the model runs, decided once from the user's settings."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def plan_device(device: str, precision: str) -> DevicePlan:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    resolved = "cuda" if device == "auto" and torch.cuda.is_available() else device
    resolved = "cpu" if resolved == "auto" else resolved
    if precision == "auto":
        precision = "bf16" if resolved == "cuda" else "fp32"
    if resolved == "cpu" and precision == "fp16":
        raise ConfigError("precision 'fp16' needs a CUDA device; use fp32 or bf16 on the CPU")
    return DevicePlan(torch.device(resolved), precision)


class ImageEncoder:
    """Normalizes uint8 pixels on the device and runs ``encode_image`` under autocast."""

    def __init__(
        self,
        model: torch.nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        plan: DevicePlan,
        compile_batch: int | None = None,
    ) -> None:
        self.plan = plan
        self.model = model.to(plan.device).eval()
        if plan.is_cuda:
            # ResNets run faster channels-last; the pixels already arrive in that layout.
            self.model = self.model.to(memory_format=torch.channels_last)
        # Compiled for one batch size (full batches): a short batch (the last, or one with
        # failures) runs eagerly rather than paying another compilation.
        self.compile_batch = compile_batch
        self._compile_worked = False
        self.compiled = (
            torch.compile(self.model.encode_image, dynamic=False)  # type: ignore[arg-type]
            if compile_batch is not None
            else None
        )
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, device=plan.device).view(shape) * 255.0
        self.std = torch.tensor(std, device=plan.device).view(shape) * 255.0

    @torch.inference_mode()
    def __call__(self, pixels_nhwc: torch.Tensor) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float16, each row of unit length."""
        if pixels_nhwc.shape[0] == 0:
            raise ValueError("empty batch")
        if pixels_nhwc.is_cuda:  # made on the decoder's stream: not reused while we read
            pixels_nhwc.record_stream(torch.cuda.current_stream(pixels_nhwc.device))
        pixels = pixels_nhwc.to(self.plan.device, non_blocking=True).permute(0, 3, 1, 2)
        images = (pixels.float() - self.mean) / self.std
        with self._autocast():
            features = self._features(images)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.to(torch.float16).cpu().numpy()

    @property
    def runs_compiled(self) -> bool:
        """Whether full batches run compiled: compiling was asked for and has worked."""
        return self.compiled is not None and self._compile_worked

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled is None or images.shape[0] != self.compile_batch:
            return self.model.encode_image(images)  # type: ignore[operator]
        if self._compile_worked:
            return self.compiled(images)
        try:  # the first call compiles
            features = self.compiled(images)
        except torch.OutOfMemoryError:
            raise  # the batch is too big either way: not a reason to stop compiling
        except Exception as exc:  # no C++ compiler, an op inductor lacks: go on without
            text = str(exc).strip()
            message = text.splitlines()[0][:200] if text else ""
            log.warning("torch.compile failed (%s: %s); encoding uncompiled",
                        type(exc).__name__, message)  # fmt: skip
            self.compiled = None
            return self.model.encode_image(images)  # type: ignore[operator]
        self._compile_worked = True
        return features

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        dtype = _AUTOCAST_DTYPES.get(self.plan.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.plan.device.type, dtype=dtype)


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    """(N, D) float32 unit vectors for ``texts``, on the CPU."""
    tokens = loaded.tokenizer(texts)
    features = loaded.model.encode_text(tokens).float()  # type: ignore[operator]
    return torch.nn.functional.normalize(features, dim=-1)
