"""The settings: TOML files, unknown keys, bad values named with their choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter_batch.config import EncodeConfig, ModelSpec, from_mapping
from meter_batch.errors import ConfigError


def test_config_from_toml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "encode.toml"
    path.write_text('images_dir = "/data"\nstore = "/s"\nbatchsize = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key.*batchsize.*valid keys"):
        EncodeConfig.from_toml(path)


def test_config_from_toml_builds_nested_dataclasses(tmp_path):
    path = tmp_path / "encode.toml"
    path.write_text(
        'images_dir = "~/photos"\nstore = "/s"\nbatch_size = 128\nworkers = 3\n'
        '[model]\nname = "RN50"\npretrained = "/m/model.pt"\n'
    )
    config = EncodeConfig.from_toml(path)
    assert config.images_dir == Path("~/photos").expanduser()
    assert config.model == ModelSpec("RN50", "/m/model.pt")
    assert (config.batch_size, config.workers, config.device) == (128, 3, "auto")
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) arch"):
        from_mapping(EncodeConfig, {"images_dir": "a", "store": "b", "model": {"arch": "x"}}, "t")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "gpu"}, "device must be one of auto, cpu, cuda; got 'gpu'"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"batch_size": True}, "batch_size must be an integer >= 1"),
    ],
)
def test_bad_values_name_the_setting_and_the_choices(changes, message):
    with pytest.raises(ConfigError, match=message):
        EncodeConfig(images_dir=Path("a"), store=Path("b"), **changes)
