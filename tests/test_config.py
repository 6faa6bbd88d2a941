"""The settings: TOML files, unknown keys, bad values named with their choices; and each
setting declared once: every encode setting is a flag of `encode` and of `bench encode`, a
key of a job file's [encode] table and a keyword of api.encode, with one check that names
it on each surface in that surface's words."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from meter_batch import api, config
from meter_batch.cli import main
from meter_batch.config import EncodeConfig, EncodeSettings, ModelSpec, from_mapping, setting_of
from meter_batch.errors import ConfigError, SettingName
from meter_batch.jobs import load_job
from tests.helpers import one_error_line


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


ENCODE_SETTINGS = [f.name for f in dataclasses.fields(EncodeSettings)]
HINTS = typing.get_type_hints(EncodeSettings)


def _flag(name: str) -> str:
    spec = next(f for f in dataclasses.fields(EncodeSettings) if f.name == name)
    details = setting_of(spec)
    assert details is not None
    return details.flag or "--" + name.replace("_", "-")


def _bad(name: str) -> object:
    """A value of the right kind for the command line that the setting's check refuses."""
    kind = HINTS[name]
    if kind is int:
        return -1
    if kind is float:
        return 0
    if kind is bool:
        return "yes"
    return "nope"  # a Literal's choices


@pytest.mark.parametrize("name", ENCODE_SETTINGS)
def test_an_encode_setting_is_checked_once_and_named_by_each_surface(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _bad(name)
    with pytest.raises(ConfigError) as from_api:
        settings: dict[str, Any] = {name: bad}
        api.encode(tmp_path / "images", tmp_path / "s", **settings)
    assert from_api.value.settings[0] == name and str(from_api.value).startswith(name)
    with pytest.raises(ConfigError) as from_job:
        from_mapping(EncodeSettings, {name: bad}, "job.toml: encode")
    assert from_job.value.settings[0] == name
    assert str(from_job.value).startswith(f"job.toml: encode: {name} ")
    if isinstance(bad, int) and not isinstance(bad, bool):  # argparse checks the rest itself
        argv = ["encode", str(tmp_path), "--store", str(tmp_path / "s"), "--pretrained", "none"]
        assert main([*argv, _flag(name), str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"meter-batch: error: {_flag(name)} must be"), err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", [["encode"], ["bench", "encode"]])
def test_every_encode_setting_is_a_flag(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    shown = capsys.readouterr().out
    missing = [name for name in ENCODE_SETTINGS if _flag(name) not in shown]
    assert missing == []


def test_a_setting_named_in_an_error_is_worded_by_the_caller() -> None:
    error = ConfigError(SettingName("path_prefix"), " must look like 'name/'; got 'a and b'")
    assert str(error) == "path_prefix must look like 'name/'; got 'a and b'"
    assert error.worded({"path_prefix": "--prefix"}.__getitem__).startswith("--prefix must")
    assert error.prefixed("job.toml: ").worded() == f"job.toml: {error}"
    assert error.settings == ("path_prefix",)


def _float_settings() -> list[tuple[type, str]]:
    """Every float setting of every settings class: the rule is general, not per field."""
    classes = [
        value
        for value in vars(config).values()
        if isinstance(value, type) and dataclasses.is_dataclass(value)
        and hasattr(value, "_checks_across")
    ]  # fmt: skip
    return [
        (cls, spec.name)
        for cls in classes
        for spec, _, hint in config.settings_fields(cls)
        if hint in (float, float | None)
    ]


FLOAT_SETTINGS = _float_settings()


def test_the_float_settings_are_found() -> None:
    names = {name for _, name in FLOAT_SETTINGS}
    assert names == {"decode_timeout", "lr", "weight_decay"}


@pytest.mark.parametrize(("cls", "name"), FLOAT_SETTINGS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), 10**400],
    ids=["nan", "inf", "-inf", "1e400"],
)
def test_every_float_setting_must_be_finite(cls: type, name: str, value: float) -> None:
    # NaN compared false with every bound, so it passed; inf and 10**400 passed `> 0`
    _, details, hint = next(f for f in config.settings_fields(cls) if f[0].name == name)
    problem = config.value_problem(value, hint, details)
    assert problem == f"must be a finite number; got {value!r}"


def test_a_non_finite_setting_is_one_line_on_each_surface(tmp_path, capsys) -> None:
    with pytest.raises(ConfigError) as caught:
        EncodeConfig(images_dir=Path("a"), store=Path("b"), decode_timeout=float("inf"))
    assert str(caught.value) == "decode_timeout must be a finite number; got inf"
    job = tmp_path / "encode.toml"
    job.write_text('images_dir = "/data"\nstore = "/s"\ndecode_timeout = nan\n')
    with pytest.raises(ConfigError, match=r"encode.toml: decode_timeout must be a finite"):
        EncodeConfig.from_toml(job)
    argv = ["encode", str(tmp_path), "--store", str(tmp_path / "s"), "--pretrained", "none"]
    assert main([*argv, "--decode-timeout", "nan"]) == 2
    assert one_error_line(capsys).endswith("--decode-timeout must be a finite number; got nan")
    assert not (tmp_path / "s").exists()


def test_decode_timeout_has_a_ceiling() -> None:
    # a pipe poll's timeout: 1e300 raised OverflowError there, a traceback, exit 1
    assert EncodeSettings(decode_timeout=86_400).decode_timeout == 86_400
    with pytest.raises(ConfigError) as caught:
        EncodeSettings(decode_timeout=1e300)
    assert str(caught.value) == "decode_timeout must be at most 86400; got 1e+300"


@pytest.mark.parametrize(
    "body",
    [
        'images_dir = "/data"\nstore = "/s"\nx = ' + "[" * 100_000 + "]" * 100_000,
        "x = " + "{ y = " * 100_000 + "1" + " }" * 100_000,
    ],
    ids=["arrays", "inline-tables"],
)
def test_toml_nested_too_deeply_is_a_config_error(tmp_path, body) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(body)
    message = f"{path}: invalid TOML: arrays or tables nested too deeply to read"
    with pytest.raises(ConfigError) as caught:
        EncodeConfig.from_toml(path)  # tomllib raised RecursionError: a traceback, exit 1
    assert str(caught.value) == message
    with pytest.raises(ConfigError) as from_job:
        load_job(path)
    assert str(from_job.value) == message
