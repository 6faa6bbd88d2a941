"""Model loading: every checkpoint format, local tags only, unsafe pickles refused, and a
store's model that moved."""

from __future__ import annotations

import collections
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from meter_batch.cli import main
from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.errors import ModelError
from meter_batch.ingest.encode_run import encode
from meter_batch.model.loading import load_model
from tests.helpers import encode_args, one_error_line


class Innocent:
    """Any class at all: unpickling it could have run code."""


def _embed(spec: ModelSpec) -> torch.Tensor:
    loaded = load_model(spec)
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        return loaded.model.encode_image(images)  # type: ignore[operator]  # nn.Module.__getattr__


@pytest.fixture
def state_dict(vit_checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(vit_checkpoint, weights_only=True)


def _save_all_formats(folder: Path, state: dict[str, torch.Tensor]) -> dict[str, Path]:
    module_prefixed = collections.OrderedDict((f"module.{k}", v) for k, v in state.items())
    training = {"epoch": 4, "name": "meter-ft", "state_dict": module_prefixed}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    training["optimizer"] = optimizer.state_dict()
    paths = {
        "training.pt": training,
        "plain.pt": state,
        "plain.bin": state,
    }
    for name, payload in paths.items():
        torch.save(payload, folder / name)
    save_file(dict(state), str(folder / "plain.safetensors"))
    return {name: folder / name for name in [*paths, "plain.safetensors"]}


def test_every_checkpoint_format_gives_identical_embeddings(tmp_path, configs, state_dict):
    files = _save_all_formats(tmp_path, state_dict)
    results = {name: _embed(ModelSpec(str(configs["vit"]), str(p))) for name, p in files.items()}
    first = results["plain.pt"]
    for name, embedding in results.items():
        assert torch.equal(embedding, first), name
    random_init = _embed(ModelSpec(str(configs["vit"]), "none"))
    assert not torch.allclose(random_init, first)  # the weights really were loaded


def test_training_checkpoint_loads_like_open_clip_does(tmp_path, configs, state_dict):
    files = _save_all_formats(tmp_path, state_dict)
    ours = _embed(ModelSpec(str(configs["vit"]), str(files["training.pt"])))
    open_clip.add_model_config(configs["vit"])
    reference = open_clip.create_model("mb-tiny-vit", pretrained=str(files["training.pt"])).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(ours, reference.encode_image(torch.rand(3, 3, 64, 64)))


def test_identity_records_checkpoint_and_preprocess(configs, vit_checkpoint):
    identity = load_model(ModelSpec(str(configs["vit"]), str(vit_checkpoint))).identity
    import hashlib

    assert identity.checkpoint_sha256 == hashlib.sha256(vit_checkpoint.read_bytes()).hexdigest()
    assert identity.architecture == "mb-tiny-vit"
    assert identity.embed_dim == 32
    assert identity.seed is None
    assert identity.preprocess["size"] == [64, 64]
    assert identity.preprocess["interpolation"] == "bicubic"
    assert identity.preprocess["resize_mode"] == "shortest"
    random = load_model(ModelSpec(str(configs["vit"]), "none", seed=5)).identity
    assert (random.pretrained, random.checkpoint_sha256, random.seed) == ("none", None, 5)


def test_random_init_is_seeded(configs):
    a = _embed(ModelSpec(str(configs["vit"]), "none", seed=1))
    b = _embed(ModelSpec(str(configs["vit"]), "none", seed=1))
    c = _embed(ModelSpec(str(configs["vit"]), "none", seed=2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_pickle_with_an_arbitrary_object_is_refused(tmp_path, configs, state_dict):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": state_dict, "extra": Innocent()}, path)
    with pytest.raises(ModelError, match="refusing to load"):
        load_model(ModelSpec(str(configs["vit"]), str(path)))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path, configs):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(ModelError, match="TorchScript"):
        load_model(ModelSpec(str(configs["vit"]), str(path)))


def test_wrong_architecture_checkpoint_is_a_model_error(tmp_path, configs, state_dict):
    path = tmp_path / "vit.safetensors"
    save_file(dict(state_dict), str(path))
    with pytest.raises(ModelError, match="does not fit"):
        load_model(ModelSpec(str(configs["resnet"]), str(path)))


@pytest.mark.parametrize(
    ("name", "pretrained", "message"),
    [
        ("NoSuchNet-9", "none", "unknown model 'NoSuchNet-9'"),
        ("RN50", "/nowhere/model.pt", "checkpoint file not found"),
        ("RN50", "laion9000", "neither a checkpoint file nor a pretrained tag"),
    ],
)
def test_bad_model_settings_are_model_errors(name, pretrained, message):
    with pytest.raises(ModelError, match=message):
        load_model(ModelSpec(name, pretrained))


def test_missing_config_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="model config file not found"):
        load_model(ModelSpec(str(tmp_path / "mine.json"), "none"))
    (tmp_path / "bad.json").write_text('{"embed_dim": 3}')
    with pytest.raises(ModelError, match="not an open_clip model config"):
        load_model(ModelSpec(str(tmp_path / "bad.json"), "none"))


def test_uncached_tag_says_where_it_looked_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    with pytest.raises(ModelError) as caught:
        load_model(ModelSpec("RN50", "openai"))
    text = str(caught.value)
    assert "not in the local cache" in text
    assert str(tmp_path / "hf") in text and "resnet50_clip.openai" in text
    assert str(tmp_path / "home" / ".cache" / "clip" / "RN50.pt") in text


def test_cached_tag_is_found_in_open_clip_cache(tmp_path, monkeypatch, configs, vit_checkpoint):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / ".cache" / "clip"
    cache.mkdir(parents=True)
    (cache / "tiny-meter.pt").write_bytes(vit_checkpoint.read_bytes())
    fake_cfg = {"url": "https://example.invalid/w/tiny-meter.pt", "quick_gelu": False}
    monkeypatch.setattr(
        open_clip, "get_pretrained_cfg", lambda arch, tag: fake_cfg if tag == "meter" else {}
    )
    from_tag = _embed(ModelSpec(str(configs["vit"]), "meter"))
    from_file = _embed(ModelSpec(str(configs["vit"]), str(vit_checkpoint)))
    assert torch.equal(from_tag, from_file)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"garbage", "is not a checkpoint: neither .safetensors"),
        (b"abc123  model.safetensors\n", "is not a checkpoint"),  # a checksum list
        (pickle.dumps({"w": [1, 2]}, protocol=4), r"other than tensors \(Unsupported operand"),
    ],
)
def test_a_file_that_is_no_checkpoint_gets_a_plain_reason(tmp_path, configs, content, message):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as caught:
        load_model(ModelSpec(str(configs["vit"]), str(path)))
    assert "weights_only" not in str(caught.value)  # not torch's advice to unpickle anyway


def test_loading_a_checkpoint_does_not_warn_of_random_weights(configs, vit_checkpoint, caplog):
    """open_clip warns 'No pretrained weights loaded' before meter-batch loads them: API
    users (no CLI logging set-up) would read a false warning."""
    with caplog.at_level("WARNING"):
        load_model(ModelSpec(str(configs["vit"]), str(vit_checkpoint)))
    assert not [r for r in caplog.records if "pretrained weights" in r.getMessage()]


def test_a_safetensors_file_with_another_suffix_is_named_as_such(tmp_path, configs, state_dict):
    path = tmp_path / "weights.bin"
    save_file(state_dict, str(path))
    with pytest.raises(ModelError, match="is a safetensors file: name it"):
        load_model(ModelSpec(str(configs["vit"]), str(path)))
    upper = tmp_path / "weights.SAFETENSORS"
    path.rename(upper)
    assert load_model(ModelSpec(str(configs["vit"]), str(upper))).identity is not None


def test_a_moved_model_gets_a_hint(tmp_path, image_dir, configs, vit_checkpoint, capsys):
    images, _ = image_dir
    moved = tmp_path / "weights.pt"
    moved.write_bytes(vit_checkpoint.read_bytes())
    spec = ModelSpec(str(configs["vit"]), str(moved))
    encode(EncodeConfig(images_dir=images, store=tmp_path / "s", model=spec, workers=0), False)
    moved.rename(tmp_path / "elsewhere.pt")
    assert main(["search", "--store", str(tmp_path / "s"), "digital"]) == 4
    assert "if its files moved, pass --model/--pretrained" in capsys.readouterr().err


ODD_STATE_DICTS: list[tuple[Callable[[dict[str, torch.Tensor]], Any], str]] = [
    (lambda s: {0: torch.zeros(2)}, r"keys must be parameter names, but it has the key 0 \(int\)"),
    (lambda s: {**s, ("a", 1): torch.zeros(2)}, r"but it has the key \('a', 1\) \(tuple\)"),
    (lambda s: {"module.a": torch.zeros(1), 0: torch.zeros(1)}, r"has the key 0 \(int\)"),
    (lambda s: {"visual": {"proj": torch.zeros(1)}}, r"its value for 'visual' is of type dict"),
    (lambda s: {**s, "logit_scale": 5}, r"its value for 'logit_scale' is of type int, not a"),
    (
        lambda s: {**s, "positional_embedding": torch.zeros(3, 5)},
        r"does not fit this architecture: text pos_embed width changed! \.\.\.$",
    ),
    (
        lambda s: {**s, "visual.positional_embedding": torch.zeros(3, 5)},
        r"does not fit this architecture: Sizes of tensors must match",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), ODD_STATE_DICTS)
def test_a_state_dict_with_odd_keys_or_values_is_a_model_error(
    tmp_path, configs, state_dict, make, message, capsys
):
    # each raised AttributeError, AssertionError or RuntimeError: a traceback, exit 1
    path = tmp_path / "odd.pt"
    torch.save(make(state_dict), path)
    with pytest.raises(ModelError, match=message):
        load_model(ModelSpec(str(configs["vit"]), str(path)))
    (tmp_path / "images").mkdir()  # the model loads before the folder is walked
    assert main(encode_args(tmp_path / "images", tmp_path / "s", configs["vit"], str(path))) == 4
    assert one_error_line(capsys).startswith(f"meter-batch: error: {path}")


def _damaged(state: dict[str, torch.Tensor], name: str, value: float) -> dict[str, torch.Tensor]:
    damaged = dict(state)
    damaged[name] = torch.full_like(state[name], value)
    return damaged


@pytest.mark.parametrize(("name", "value"), [("visual.proj", float("nan")),
                                             ("logit_scale", float("inf"))])  # fmt: skip
def test_nan_weights_are_refused_before_a_store_is_made(
    tmp_path, image_dir, configs, state_dict, name, value, capsys
):
    # every embedding came out NaN, stored, and verify said ok
    path = tmp_path / "damaged.pt"
    torch.save(_damaged(state_dict, name, value), path)
    with pytest.raises(ModelError) as caught:
        load_model(ModelSpec(str(configs["vit"]), str(path)))
    assert str(caught.value) == (
        f"{path}: weight {name} holds NaN or inf values; the weights are damaged "
        f"(export them again from a good training checkpoint)"
    )
    images, _ = image_dir
    assert main(encode_args(images, tmp_path / "store", configs["vit"], str(path))) == 4
    assert one_error_line(capsys).endswith(
        "holds NaN or inf values; the weights are damaged "
        "(export them again from a good training checkpoint)"
    )
    assert not (tmp_path / "store").exists()


def test_batchnorm_statistics_are_checked_and_computed_buffers_are_not(tmp_path, configs):
    open_clip.add_model_config(configs["resnet"])
    state = open_clip.create_model("mb-tiny-resnet").state_dict()
    path = tmp_path / "resnet.pt"
    torch.save(_damaged(state, "visual.bn1.running_var", float("inf")), path)
    with pytest.raises(ModelError, match=r"weight visual\.bn1\.running_var holds NaN or inf"):
        load_model(ModelSpec(str(configs["resnet"]), str(path)))
    torch.save(state, path)  # its text tower's attn_mask is -inf by design: not a weight
    loaded = load_model(ModelSpec(str(configs["resnet"]), str(path)))
    assert torch.isinf(loaded.model.get_buffer("attn_mask")).any()


def test_loading_warns_of_nothing(tmp_path, configs, vit_checkpoint):
    # torch warned "Detected pickle protocol 4 ..." on the terminal before the refusal
    path = tmp_path / "protocol4.pt"
    path.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError, match=r"other than tensors \(Unsupported operand"):
            load_model(ModelSpec(str(configs["vit"]), str(path)))
        load_model(ModelSpec(str(configs["vit"]), str(vit_checkpoint)))
    assert [str(w.message) for w in caught] == []
