"""The image encoder never returns an embedding that is not finite: a model that makes NaN
or inf is refused on its warm-up batch (GPUs) and on every batch, before rows are written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meter_batch.cli import main
from meter_batch.config import ModelSpec
from meter_batch.errors import ModelError
from meter_batch.ingest.decode import DecodeOptions, split_preprocess
from meter_batch.ingest.encode_loop import LoopPlan, _ready_encoder, _Start
from meter_batch.model.encoder import DevicePlan, ImageEncoder, plan_device
from meter_batch.model.loading import LoadedModel, load_model
from tests.helpers import encode_args, one_error_line, read_parts

NAN = float("nan")


@pytest.fixture
def tiny(configs: dict[str, Path]) -> LoadedModel:
    return load_model(ModelSpec(str(configs["vit"]), "none"))


def _encoder(loaded: LoadedModel, plan: DevicePlan) -> ImageEncoder:
    stage = split_preprocess(loaded.reference_preprocess)
    return ImageEncoder(loaded.model, stage.mean, stage.std, plan, name=loaded.architecture)


def _pixels(count: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (count, 64, 64, 3), dtype=torch.uint8)


def test_a_warm_up_batch_of_nan_embeddings_is_a_model_error(tiny):
    encoder = _encoder(tiny, plan_device("cpu", "fp32"))
    encoder.warm_up(2, 64)  # finite weights: nothing to say
    with torch.no_grad():
        tiny.model.visual.proj.fill_(NAN)
    with pytest.raises(ModelError) as caught:
        encoder.warm_up(2, 64)
    assert str(caught.value) == (
        "model mb-tiny-vit produces non-finite embeddings (NaN/inf) on a warm-up batch "
        "(fp32); the weights are damaged"
    )


@pytest.mark.parametrize(
    ("precision", "advice"),
    [
        ("fp32", "its weights overflow float32 (damaged weights)"),
        ("bf16", "reduced precision can overflow: try --precision fp32"),
    ],
)
def test_a_batch_with_one_non_finite_row_is_never_returned(tiny, monkeypatch, precision, advice):
    encoder = _encoder(tiny, plan_device("cpu", precision))
    assert encoder(_pixels(3)).shape == (3, 32)
    original = tiny.model.encode_image

    def one_overflows(images: torch.Tensor) -> torch.Tensor:
        features = original(images).clone()
        features[1, 4] = float("inf")  # normalising it makes the row NaN
        return features

    monkeypatch.setattr(tiny.model, "encode_image", one_overflows)
    with pytest.raises(ModelError) as caught:
        encoder(_pixels(3))
    assert str(caught.value) == (
        f"model mb-tiny-vit produced non-finite embeddings (NaN/inf) for 1 of 3 images of a "
        f"batch ({precision}); the run stops before writing them: {advice}"
    )


def test_a_gpu_encoder_is_warmed_up_and_checked_before_the_first_batch(tiny, monkeypatch):
    # on a CPU the warm-up is skipped (the first batch costs the same): pretend a GPU
    monkeypatch.setattr(DevicePlan, "is_cuda", property(lambda self: True))
    stage = split_preprocess(tiny.reference_preprocess)
    plan = LoopPlan(stage, DecodeOptions(stage.transform, 10**8), plan_device("cpu", "fp32"))
    start = _Start(tiny, plan, batch_size=2, compile_it=False)
    assert _ready_encoder(start).name == "mb-tiny-vit"
    with torch.no_grad():
        tiny.model.visual.proj.fill_(NAN)
    with pytest.raises(ModelError, match=r"non-finite embeddings .* on a warm-up batch"):
        _ready_encoder(start)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_warm_up_refuses_nan_embeddings(tiny):
    stage = split_preprocess(tiny.reference_preprocess)
    plan = LoopPlan(stage, DecodeOptions(stage.transform, 10**8), plan_device("cuda", "bf16"))
    with torch.no_grad():
        tiny.model.visual.proj.fill_(NAN)
    with pytest.raises(ModelError) as caught:
        _ready_encoder(_Start(tiny, plan, batch_size=4, compile_it=False))
    assert str(caught.value) == (
        "model mb-tiny-vit produces non-finite embeddings (NaN/inf) on a warm-up batch "
        "(bf16); the weights are damaged"
    )


def test_finite_weights_that_overflow_stop_encode_before_a_row_is_written(
    tmp_path, image_dir, configs, vit_checkpoint, capsys
):
    # every weight finite (the loader's check passes) but the features are +inf in
    # float32: NaN rows were written and verify said ok
    state = torch.load(vit_checkpoint, weights_only=True)
    state["visual.ln_post.bias"] = torch.full_like(state["visual.ln_post.bias"], 1e30)
    state["visual.proj"] = torch.full_like(state["visual.proj"], 1e10)
    checkpoint = tmp_path / "overflows.pt"
    torch.save(state, checkpoint)
    images, relpaths = image_dir
    store = tmp_path / "store"
    assert main(["-q", *encode_args(images, store, configs["vit"], str(checkpoint))]) == 4
    assert one_error_line(capsys).endswith(
        f"model mb-tiny-vit produced non-finite embeddings (NaN/inf) for {len(relpaths)} of "
        f"{len(relpaths)} images of a batch (fp32); the run stops before writing them: its "
        f"weights overflow float32 (damaged weights)"
    )
    assert read_parts(store, "embeddings").num_rows == 0


@pytest.mark.parametrize("which", ["vit", "resnet", "demo"])
def test_text_features_on_trimmed_tokens_equal_open_clips_encode_text(which, configs):
    """Texts of different lengths in one batch (Japanese: many byte tokens each): the
    trimmed tower's features are open_clip's own, for the test towers and the demo model."""
    from meter_batch.model.encoder import _trimmable, text_features
    from meter_batch.tools.demo import demo_model

    spec = demo_model() if which == "demo" else ModelSpec(str(configs[which]), "none")
    loaded = load_model(spec)
    assert _trimmable(loaded.model)  # the shortcut is taken, not skipped
    texts = ["a meter", "デジタルメーター(7セグ)", "an analog meter with a round dial, rusty"]
    tokens = loaded.tokenizer(texts)
    assert int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]  # there is padding to cut
    with torch.no_grad():
        ours = text_features(loaded.model, tokens)
        reference = loaded.model.encode_text(tokens)  # type: ignore[operator]
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)
