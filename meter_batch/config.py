"""Every setting, declared once: a frozen dataclass per command, and the parts they share.

A field's default, help text, CLI flag and checks live in its ``setting(...)``. The CLI's
options (cli.py), the job file's keys (jobs.py), the Python API's keyword arguments
(api.py) and `bench`'s options are derived from the fields, so a new setting is one
line here. TOML in (``from_mapping``), unknown keys rejected, values checked by type.
This module imports nothing heavy: the CLI builds its parser from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from meter_batch.errors import ConfigError, SettingName

T = TypeVar("T")

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# Where plain JPEGs are decoded. auto: on the model's device when it is a GPU (nvjpeg,
# 3-5x the CPU workers' rate) unless exact; workers: always by the decode workers (PIL);
# device: on the model's device even when that is the CPU (torchvision, main process).
JpegDecode = Literal["auto", "workers", "device"]
DEVICES: tuple[str, ...] = typing.get_args(Device)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
JPEG_DECODERS: tuple[str, ...] = typing.get_args(JpegDecode)
MAX_DECODE_TIMEOUT = 86_400.0  # seconds: a file that takes a day to decode is hung


@dataclass(frozen=True)
class Setting:
    """What a field tells the surfaces besides its name, type and default."""

    help: str
    flag: str | None = None  # the CLI option, when it is not --field-name
    positional: str | None = None  # a CLI positional argument, by this metavar
    cli: bool = True  # False: set from files and the API only
    minimum: int = 1  # integers (and tuples of them): at least this; floats: 0 allows 0
    maximum: float | None = None  # floats: at most this (and finite, always)
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None
    shown_default: str | None = None  # the default as the help shows it


def setting(
    help: str,
    *,
    default: Any = dataclasses.MISSING,
    factory: Callable[[], Any] | None = None,
    **details: Any,
) -> Any:
    """A settings field with its Setting; without a default it is required. (Typed Any:
    the field's annotation types it; type checkers see the default through
    ``settings``'s dataclass_transform.)"""
    metadata = {"setting": Setting(help, **details)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@overload
def settings(cls: type[T], /) -> type[T]: ...
@overload
def settings(*, kw_only: bool = False) -> Callable[[type[T]], type[T]]: ...
@typing.dataclass_transform(frozen_default=True, field_specifiers=(field, setting))
def settings(cls: Any = None, /, *, kw_only: bool = False) -> Any:
    """A frozen dataclass of settings (``kw_only``: its own fields by keyword only) whose
    values are checked on creation (``check_settings``); a ``__post_init__`` of the class
    (or of a settings class it extends) adds checks across fields, run after those."""

    def make(target: Any) -> Any:
        across = target.__dict__.get("__post_init__") or getattr(target, "_checks_across", None)
        target._checks_across = across

        def post_init(self: Any) -> None:
            check_settings(self)
            if across is not None:
                across(self)

        target.__post_init__ = post_init
        return dataclass(frozen=True, kw_only=kw_only)(target)

    return make if cls is None else make(cls)


def setting_of(spec: dataclasses.Field[Any]) -> Setting | None:
    found = spec.metadata.get("setting")
    return found if isinstance(found, Setting) else None


def settings_fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting, Any]]:
    """(field, its Setting, its resolved type hint) for every setting of ``cls``."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        found = setting_of(spec)
        if found is not None:
            yield spec, found, hints[spec.name]


def check_settings(instance: Any) -> None:
    """Check every setting's value against its type (and its own check); the first
    problem is a ConfigError that names the setting, for each surface to word."""
    for spec, details, hint in settings_fields(type(instance)):
        problem = value_problem(getattr(instance, spec.name), hint, details)
        if problem is not None:
            raise ConfigError(SettingName(spec.name), f" {problem}")


def value_problem(value: Any, hint: Any, details: Setting) -> str | None:
    """What is wrong with ``value`` for a setting of type ``hint``, or None."""
    if isinstance(hint, types.UnionType) and value is None:
        return None  # an optional setting left unset
    kind = _plain(hint)
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {value!r}"
    elif kind is bool and not isinstance(value, bool):
        return f"must be true or false; got {value!r}"
    elif kind is int and not _is_integer(value, details.minimum):
        return f"must be an integer >= {details.minimum}; got {value!r}"
    elif kind is float and (problem := _number_problem(value, details)) is not None:
        return problem
    elif typing.get_origin(kind) is tuple:
        bad = [v for v in value if not _is_integer(v, details.minimum)]
        if bad:
            return f"must be an integer >= {details.minimum}; got {bad[0]!r}"
    return details.check(value) if details.check is not None else None


def _plain(hint: Any) -> Any:
    """``X | None`` -> X."""
    if isinstance(hint, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


def _is_integer(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _number_problem(value: Any, details: Setting) -> str | None:
    """Floats: positive, or with ``minimum`` 0 at least 0; at most ``maximum``; finite.
    NaN passed every check by comparing false, and inf or 1e300 reached the code as a
    timeout or a rate that overflows there: every float setting must be a finite number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _number_wanted(details, value)
    if not _is_finite(value):
        return f"must be a finite number; got {value!r}"
    if not (value >= 0 if details.minimum == 0 else value > 0):
        return _number_wanted(details, value)
    if details.maximum is not None and value > details.maximum:
        return f"must be at most {details.maximum:g}; got {value!r}"
    return None


def _number_wanted(details: Setting, value: Any) -> str:
    if details.minimum == 0:
        return f"must be a number >= 0; got {value!r}"
    return f"must be a positive number; got {value!r}"


def _is_finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (TOML allows them)
        return False


def default_workers() -> int:
    """One decode worker per core: decoding is the bottleneck on every machine we measured."""
    return max(1, min(os.cpu_count() or 1, 16))


def _not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _weights_given(value: str) -> str | None:
    return None if value else "must not be empty (use 'none' for random weights)"


def _prefix_problem(prefix: str) -> str | None:
    """Paths of a multi-root store are stored as ``<prefix><path below the root>``."""
    if prefix and (not prefix.endswith("/") or prefix.startswith("/") or "//" in prefix):
        return f"must look like 'name/' (no leading '/'); got {prefix!r}"
    return None


@settings
class ModelSpec:
    """Which model encodes: an open_clip architecture (or JSON config) and its weights.

    ``pretrained`` is a local checkpoint file, an open_clip pretrained tag resolved from
    the local cache only, or ``"none"`` for a seeded random init (tests, benchmarks).
    """

    name: str = setting(
        "open_clip architecture name, or a JSON model config file",
        default="RN50",
        flag="--model",
        check=_not_empty,
    )
    pretrained: str = setting(
        "checkpoint file (.pt/.bin/.safetensors), an open_clip tag found in the local cache "
        "(e.g. openai), or 'none' for seeded random weights",
        default="none",
        check=_weights_given,
    )
    seed: int = setting(
        "seed of a random init (pretrained 'none')", default=0, cli=False, minimum=0
    )


@settings
class EncodeSettings:
    """How `encode` runs: the [encode] table of a job file, and `bench encode`'s knobs."""

    batch_size: int = setting("images per batch", default=64)
    workers: int = setting(
        "decoder processes; 0 decodes in the main process",
        factory=default_workers,
        minimum=0,
        shown_default="CPU cores, at most 16",
    )
    device: Device = setting(
        "where the model runs: CUDA when available, or the CPU", default="auto"
    )
    precision: Precision = setting("auto = bf16 autocast on CUDA, fp32 on CPU", default="auto")
    commit_every: int = setting(
        "commit after this many images, so a crash loses at most that much",
        default=10_000,
    )
    max_pixels: int = setting(
        "larger images (by their header) are failures of kind too_large",
        default=100_000_000,
    )
    decode_timeout: float = setting(
        "seconds one file may take to decode before it is recorded as hung (at most a day)",
        default=60.0,
        # the deadline is a pipe poll's timeout: beyond ~9.2e9 s it overflows there
        maximum=MAX_DECODE_TIMEOUT,
    )
    exact: bool = setting(
        "decode every JPEG in full (the reference pixels) instead of the fast DCT-scaled "
        "path for large JPEGs; the store records which path each run used",
        default=False,
    )
    jpeg_decode: JpegDecode = setting(
        "where plain JPEGs are decoded: auto = on the GPU (nvjpeg) when the model runs on "
        "one and not --exact, else by the workers; workers = always PIL in the workers; "
        "device = on the model's device",
        default="auto",
    )
    compile: bool = setting(
        "torch.compile the image encoder (full batches): 5-20 s once per run; RN50's "
        "encode loop ran 15-24% faster on 2 CPU cores (BENCHMARKS.md); runs of fewer than "
        "4 full batches are not compiled",
        default=False,
    )
    thumbnails: bool = setting(
        "also make `report`'s thumbnails of the images encoded and keep them in the store "
        "(for archives whose files will be deleted): the decode workers make them from the "
        "image they decode (JPEGs decoded on the GPU: read again after the run)",
        default=False,
    )

    def __post_init__(self) -> None:
        if self.exact and self.jpeg_decode == "device":
            raise ConfigError(
                SettingName("jpeg_decode"),
                " 'device' and ",
                SettingName("exact"),
                " exclude each other: exact means open_clip's own (PIL) decoding of every file",
            )

    def encode_settings(self) -> dict[str, Any]:
        """Just these settings of an instance (of a subclass too), to build another."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EncodeSettings)}


@settings(kw_only=True)
class EncodeConfig(EncodeSettings):
    """Everything one `encode` run needs: what to encode into which store, and how."""

    images_dir: Path = setting("the folder to encode", positional="IMAGES_DIR")
    store: Path = setting("store folder (created if new)")
    model: ModelSpec = field(default_factory=ModelSpec)
    path_prefix: str = setting(
        "store paths as PREFIX + path below IMAGES_DIR (several roots in one store: give "
        "each its own, e.g. site-a/)",
        default="",
        flag="--prefix",
        check=_prefix_problem,
    )
    part_rows: int = setting("rows per Parquet part", default=50_000, cli=False)

    @classmethod
    def from_toml(cls, path: Path) -> EncodeConfig:
        return from_mapping(cls, read_toml(path), where=str(path))


@settings
class SearchSettings:
    k: int = setting("results", default=20, flag="-k")


@settings
class ReportSettings:
    gallery: int = setting("images per gallery (each label's most and least confident)", default=12)
    review: int = setting("images in each label set's review queue", default=100)
    map_points: int = setting("embeddings sampled for the map at most", default=20_000)
    map_thumbnails: int = setting(
        "map points that show their thumbnail on hover, at most (thumbnails cost a decode "
        "each the first time)",
        default=2_000,
        minimum=0,
    )
    projection: Literal["pca", "umap"] = setting(
        "the map's projection (umap: needs the umap extra)", default="pca"
    )


@settings
class ServeSettings:
    host: str = setting(
        "address to listen on (another than 127.0.0.1 / ::1 / localhost is warned about: "
        "no authentication)",
        default="127.0.0.1",
    )
    port: int = setting("TCP port (0: a free one)", default=8765, minimum=0)
    max_upload_mb: int = setting("largest image a search by image may send, in MiB", default=20)
    report: Path | None = setting(
        "a folder written by `meter-batch report`, served under /report/", default=None
    )


@settings
class DemoSettings:
    dir: Path = setting("folder for the renders and the store", default=Path("demo-output"))
    count: int = setting(
        "held-out images (one of each meter type at least)", default=600, minimum=3
    )
    workers: int = setting("decoders", factory=default_workers, minimum=0)
    standard_only: bool = setting(
        "skip the style-shifted half (zero-shot against few-shot and calibrated sets)",
        default=False,
    )


@settings
class SynthSettings:
    out: Path = setting("output folder", positional="OUT")
    count: int = setting("images", default=3000)
    seed: int = setting("image i depends only on (seed, i)", default=0, minimum=0)
    captions_per_image: int = setting("caption rows per image", default=2)
    workers: int = setting("processes (0 or 1: in this one)", factory=default_workers, minimum=0)
    style: Literal["standard", "shifted"] = setting(
        "look: standard (the demo model's training renders) or shifted (one it never saw)",
        default="standard",
    )


@settings(kw_only=True)
class FinetuneOptions:
    """One training run. ``model`` is an open_clip name or a JSON model config."""

    train_csv: Path = setting(
        "table of (image path, caption), comma- or tab-separated, with a header; "
        "relative paths are relative to the table's folder",
        positional="CAPTIONS_CSV",
    )
    out_dir: Path = setting("output folder", flag="--out")
    model: str = setting("open_clip architecture name, or a JSON model config file", default="RN50")
    pretrained: str = setting(
        "starting weights: a local checkpoint, a cached open_clip tag, or none (scratch)",
        default="none",
    )
    epochs: int = setting("passes over the table", default=1)
    batch_size: int = setting("images per step", default=64)
    lr: float = setting("peak learning rate", default=5e-4)
    warmup: int = setting("warm-up steps", default=100, minimum=0)
    weight_decay: float = setting("weight decay", default=0.1, flag="--wd", minimum=0)
    device: Device = setting("where to train", default="auto")
    workers: int = setting("data loader workers", default=2, minimum=0)
    seed: int = setting("training seed", default=0, minimum=0)
    image_column: str = setting("the table's image path column", default="filepath")
    caption_column: str = setting("the table's caption column", default="title")
    half: bool = setting("store the weights as float16 (half the size)", default=False)


@settings(kw_only=True)
class BenchOutput:
    """What every benchmark shares: its scratch folder and where to write its figures."""

    dir: Path = setting("scratch folder", default=Path("bench-output"))
    json: Path | None = setting("also write the results here", default=None)


@settings(kw_only=True)
class BenchEncodeSettings(EncodeSettings, BenchOutput):
    """`bench encode`: the encode settings, on a folder of one's own or a generated one."""

    images: Path | None = setting("an image folder (default: generate one)", default=None)
    count: int = setting("images to generate", default=600)
    model: ModelSpec = field(default_factory=ModelSpec)


@settings(kw_only=True)
class BenchClassifySettings(BenchOutput):
    n: tuple[int, ...] = setting(
        "store sizes, repeatable",
        default=(100_000, 1_000_000),
        shown_default="100000 and 1000000",
    )
    dim: int = setting("embedding dimension", default=1024)
    labels: int = setting("labels", default=10)


@settings(kw_only=True)
class BenchReportSettings(BenchOutput):
    n: int = setting("images in the synthetic store", default=1_000_000)
    dim: int = setting("embedding dimension", default=1024)
    labels: int = setting("labels", default=10)


@settings(kw_only=True)
class BenchServeSettings(BenchOutput):
    n: int = setting("images in the synthetic store", default=100_000)
    model: str = setting(
        "the store's model: demo (the shipped one), or an open_clip architecture with "
        "random weights (RN50: the production text encoder's cost)",
        default="demo",
    )
    requests: int = setting("text searches timed (each a different text)", default=200)


@settings(kw_only=True)
class BenchRescanSettings(BenchOutput):
    files: int = setting("files", default=100_000)


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
    except RecursionError as exc:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(
            f"{path}: invalid TOML: arrays or tables nested too deeply to read"
        ) from exc


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
    except ConfigError as exc:  # a bad value: say in which file
        raise exc.prefixed(f"{where}: ") from exc
    except TypeError as exc:
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
        if typing.get_origin(option) is tuple and isinstance(value, list):
            return tuple(value)
    return value
