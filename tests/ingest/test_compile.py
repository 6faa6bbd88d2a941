"""`encode --compile`: torch.compile'd full batches, eager short ones, and a fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from meter_batch.config import EncodeConfig
from meter_batch.errors import ConfigError
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from tests.helpers import encode_images, stored_vectors


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # float16 rows: not quite unit


def _counting_compile(monkeypatch: pytest.MonkeyPatch, calls: list[int], broken: bool) -> None:
    real = torch.compile

    def fake(fn, **kwargs):
        # Dynamo traces and runs the graph as the product asks, but through aot_eager:
        # inductor's C++ build of the same graph costs ~35 s on a cold cache (a fresh CI
        # machine) and is torch's to test; the GPU benchmark runs the real backend.
        compiled = real(fn, **{**kwargs, "backend": "aot_eager"})

        def call(images):
            calls.append(images.shape[0])
            if broken:
                raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")
            return compiled(images)

        return call

    monkeypatch.setattr(torch, "compile", fake)


def test_compiled_batches_embed_like_eager_ones(tmp_path, image_dir, configs, monkeypatch):
    images, paths = image_dir  # 14 images in batches of 2: seven full batches
    eager = encode_images(images, tmp_path / "eager", configs["vit"], workers=0, batch_size=2)
    calls: list[int] = []
    _counting_compile(monkeypatch, calls, broken=False)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = encode_images(
        images, tmp_path / "compiled", configs["vit"], workers=0, batch_size=2, compile=True
    )
    assert calls == [2] * 7  # every batch went through the compiled function ...
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # ... compiled
    assert compiled.encoded == eager.encoded == len(paths) == 14
    assert compiled.compiled is True and eager.compiled is False
    ours, reference = stored_vectors(tmp_path / "compiled"), stored_vectors(tmp_path / "eager")
    assert sorted(ours) == sorted(reference) == sorted(paths)
    cosines = [_cosine(ours[p], reference[p]) for p in paths]
    assert min(cosines) > 0.9999
    assert open_store(tmp_path / "compiled").manifest.runs[-1].compile is True


def test_a_failing_compile_falls_back_to_eager(tmp_path, image_dir, configs, monkeypatch, caplog):
    images, paths = image_dir
    eager = encode_images(images, tmp_path / "eager", configs["vit"], workers=0, batch_size=2)
    calls: list[int] = []
    _counting_compile(monkeypatch, calls, broken=True)
    with caplog.at_level(logging.WARNING, logger="meter_batch"):
        summary = encode_images(
            images, tmp_path / "fallback", configs["vit"], workers=0, batch_size=2, compile=True
        )
    assert calls == [2]  # tried once, then never again
    assert summary.encoded == eager.encoded == 14 and summary.failed == 0
    assert summary.compiled is False  # what happened, not what was asked
    ours, reference = stored_vectors(tmp_path / "fallback"), stored_vectors(tmp_path / "eager")
    assert all(np.array_equal(ours[p], reference[p]) for p in paths)
    query = "SELECT preprocess_path, jpeg_decode, compile FROM runs"  # what analysts see
    assert run_query(tmp_path / "fallback", query).to_pylist() == [
        {"preprocess_path": "fast", "jpeg_decode": "workers", "compile": False}
    ]
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert warnings == [
        "torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ compiler "
        "found); encoding uncompiled"
    ]


def test_a_run_of_few_batches_is_not_compiled(tmp_path, image_dir, configs, monkeypatch, caplog):
    images, _ = image_dir  # 14 images, batches of 4: fewer than COMPILE_MIN_BATCHES full ones
    calls: list[int] = []
    _counting_compile(monkeypatch, calls, broken=False)
    with caplog.at_level(logging.INFO, logger="meter_batch"):
        summary = encode_images(
            images, tmp_path / "s", configs["vit"], workers=0, batch_size=4, compile=True
        )
    assert calls == [] and summary.compiled is False and summary.encoded == 14
    assert "not compiling: 14 images are fewer than 4 full batches of 4" in caplog.text


@pytest.mark.parametrize("value", ["yes", 1])
def test_compile_must_be_a_boolean(tmp_path, value):
    with pytest.raises(ConfigError, match="compile must be true or false"):
        EncodeConfig(images_dir=tmp_path, store=tmp_path / "s", compile=value)
