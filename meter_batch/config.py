"""Settings as frozen dataclasses. TOML in, unknown keys rejected, values checked."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from meter_batch.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Where plain JPEGs are decoded. auto: on the model's device when it is a GPU (nvjpeg,
# 3-5x the CPU workers' rate) unless exact; workers: always by the decode workers (PIL);
# device: on the model's device even when that is the CPU (torchvision, main process).
JPEG_DECODERS = ("auto", "workers", "device")

T = TypeVar("T")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_bool(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false; got {value!r}")


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Which model encodes: an open_clip architecture (or JSON config) and its weights.

    ``pretrained`` is a local checkpoint file, an open_clip pretrained tag resolved from
    the local cache only, or ``"none"`` for a seeded random init (tests, benchmarks).
    """

    name: str = "RN50"
    pretrained: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model must not be empty")
        if not self.pretrained:
            raise ConfigError("pretrained must not be empty (use 'none' for random weights)")


def _check_prefix(prefix: str) -> None:
    """Paths of a multi-root store are stored as ``<prefix><path below the root>``."""
    if prefix and (not prefix.endswith("/") or prefix.startswith("/") or "//" in prefix):
        raise ConfigError(f"path_prefix must look like 'name/' (no leading '/'); got {prefix!r}")


def default_workers() -> int:
    """One decode worker per core: decoding is the bottleneck on every machine we measured."""
    return max(1, min(os.cpu_count() or 1, 16))


@dataclass(frozen=True)
class EncodeConfig:
    """Everything one `encode` run needs."""

    images_dir: Path
    store: Path
    model: ModelSpec = field(default_factory=ModelSpec)
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    device: str = "auto"
    precision: str = "auto"
    part_rows: int = 50_000
    commit_every: int = 10_000
    path_prefix: str = ""
    max_pixels: int = 100_000_000
    decode_timeout: float = 60.0
    exact: bool = False  # True: no JPEG DCT scaling, pixels exactly open_clip's
    jpeg_decode: str = "auto"  # auto | workers | device (see JPEG_DECODERS)
    compile: bool = False  # torch.compile the image encoder (full batches)

    def __post_init__(self) -> None:
        _check_bool("exact", self.exact)
        _check_bool("compile", self.compile)
        _check_positive("max_pixels", self.max_pixels)
        if not isinstance(self.decode_timeout, int | float) or self.decode_timeout <= 0:
            raise ConfigError(
                f"decode_timeout must be a positive number; got {self.decode_timeout!r}"
            )
        _check_positive("batch_size", self.batch_size)
        _check_positive("commit_every", self.commit_every)
        _check_prefix(self.path_prefix)
        _check_positive("workers", self.workers, minimum=0)
        _check_positive("part_rows", self.part_rows)
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("jpeg_decode", self.jpeg_decode, JPEG_DECODERS)
        if self.exact and self.jpeg_decode == "device":
            raise ConfigError(
                "jpeg_decode 'device' and exact exclude each other: exact "
                "means open_clip's own (PIL) decoding of every file"
            )

    @classmethod
    def from_toml(cls, path: Path) -> EncodeConfig:
        return from_mapping(cls, read_toml(path), where=str(path))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path} is a folder, not a TOML file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from a mapping; nested dataclasses and Paths are converted."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as exc:  # a bad value: say in which file
        raise ConfigError(f"{where}: {exc}") from exc


def _convert(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(option, type):
            return from_mapping(option, value, where)
        if option is Path:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a path string, got {value!r}")
            return Path(value).expanduser()
    return value
