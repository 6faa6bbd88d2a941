"""What the benchmarks share: peak RSS, and the rows of a synthetic store (a model
identity no checkpoint has, rows of fake files) built through the real write path."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np

from meter_batch.config import ModelSpec
from meter_batch.model.identity import ModelIdentity
from meter_batch.store.write import ImageRows

WRITE_BATCH = 65_536


SYNTHETIC_MODEL = ModelSpec("synthetic", "none")


def synthetic_identity(dim: int) -> ModelIdentity:
    return ModelIdentity(
        architecture="synthetic",
        config_sha256="-",
        pretrained="none",
        checkpoint_sha256=None,
        seed=0,
        quick_gelu=False,
        preprocess={},
        embed_dim=dim,
    )


def fake_rows(start: int, count: int, vectors: np.ndarray) -> ImageRows:
    return ImageRows(
        relpaths=[f"synthetic/{i:09d}.jpg".encode() for i in range(start, start + count)],
        sizes=np.full(count, 100_000, dtype=np.int64),
        mtimes_ns=np.full(count, 1_700_000_000 * 10**9, dtype=np.int64),
        widths=[640] * count,
        heights=[480] * count,
        frames=[1] * count,
        hashes=[b"\0" * 16] * count,
        embeddings=vectors,
    )


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
