"""uint8 pixel batches -> L2-normalized float16 embeddings, on the chosen device.

No embedding that is not finite is ever returned: a model that makes NaN or inf (damaged
weights, or fp16 overflowing) stops the run with a ModelError before its rows are written.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meter_batch.errors import ConfigError, ModelError
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
        name: str = "",  # the model, as its errors name it
    ) -> None:
        self.plan, self.name = plan, name
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

    def __call__(self, pixels_nhwc: torch.Tensor) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float16, each row of unit length."""
        embeddings = self._embed(pixels_nhwc)
        bad = _non_finite_rows(embeddings)
        if bad:
            raise ModelError(
                f"{_model(self.name)} produced non-finite embeddings (NaN/inf) for {bad} of "
                f"{len(embeddings)} images of a batch ({self.plan.precision}); the run stops "
                f"before writing them: {_advice(self.plan.precision)}"
            )
        return embeddings

    def warm_up(self, batch_size: int, side: int) -> None:
        """One batch of black images: CUDA's first-call set-up (and compiling, when asked),
        and a check that the model's outputs are finite at all, before any batch is encoded."""
        pixels = torch.zeros((batch_size, side, side, 3), dtype=torch.uint8)
        if _non_finite_rows(self._embed(pixels)):
            raise ModelError(
                f"{_model(self.name)} produces non-finite embeddings (NaN/inf) on a warm-up "
                f"batch ({self.plan.precision}); the weights are damaged"
            )

    @torch.inference_mode()
    def _embed(self, pixels_nhwc: torch.Tensor) -> np.ndarray:
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


def _non_finite_rows(embeddings: np.ndarray) -> int:
    """Rows with a NaN or inf: checked on the float16 result, the very values returned
    (a (64, 1024) batch costs microseconds)."""
    return int((~np.isfinite(embeddings)).any(axis=1).sum())


def _model(name: str) -> str:
    return f"model {name}" if name else "the model"


def _advice(precision: str) -> str:
    if precision == "fp32":
        return "its weights overflow float32 (damaged weights)"
    return "reduced precision can overflow: try --precision fp32"


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    """(N, D) float32 unit vectors for ``texts``, on the CPU; a NaN or inf is a ModelError
    (label matrices and text queries would otherwise score every image NaN)."""
    tokens = loaded.tokenizer(texts)
    with torch.no_grad():  # a query or a label matrix: no autograd graph (a fifth of the time)
        features = text_features(loaded.model, tokens).float()
    embeddings = torch.nn.functional.normalize(features, dim=-1)
    bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
    if bad:
        raise ModelError(
            f"model {loaded.architecture} produces non-finite text embeddings (NaN/inf) for "
            f"{bad} of {len(texts)} texts; the weights are damaged"
        )
    return embeddings


def text_features(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text, run on the tokens up to the batch's last end-of-text when
    that is exact: a CLIP text tower with a causal mask that pools at the end-of-text
    token (the tokenizer's highest id) computes it from the tokens before it only, so the
    padding to 77 changes nothing but the cost (RN50: 50 -> 27 ms a query, 2 cores)."""
    if not _trimmable(model):
        return model.encode_text(tokens)  # type: ignore[operator]
    length = int(tokens.argmax(dim=-1).max()) + 1
    text = tokens[:, :length]
    clip: Any = model
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(text).to(cast) + clip.positional_embedding[:length].to(cast)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    pooled = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]
    projection = clip.text_projection
    return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection


def _trimmable(model: torch.nn.Module) -> bool:
    from open_clip.model import CLIP

    return (
        type(model) is CLIP  # not a subclass that may encode text its own way
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_projection", None) is not None
    )
