"""What store.json and a manifest must look like, checked on every read.

A damaged or hand-edited file (``[]``, ``"seq": "x"``, ``next_image_id: null``, a part
named ``../../etc/passwd``) becomes one ValueError naming the key, which the store turns
into a StoreError: never a TypeError deep inside a reader, never a path outside the store.
The records' own type hints are the schema, so a new field is checked without a line here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from meter_batch.config import ModelSpec
from meter_batch.model.identity import ModelIdentity
from meter_batch.store.layout import INDEX_SUFFIX, PARQUET_SUFFIX, Folder
from meter_batch.store.records import Manifest


def check_record(cls: type, data: Any, where: str) -> None:
    """Raise ValueError unless ``data`` has the keys and JSON types of dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    hints = typing.get_type_hints(cls)
    for name, spec in fields.items():
        if name not in data:
            if _required(spec):
                raise ValueError(f"{where}: key {name!r} is missing")
            continue
        _check_value(data[name], hints[name], f"{where}.{name}")


def _required(spec: dataclasses.Field[Any]) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


def _check_value(value: Any, hint: Any, where: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if not any(_fits(value, option) for option in args):
            raise ValueError(f"{where}: expected {_name(hint)}, got {_kind(value)}")
        for option in args:
            if _fits(value, option):
                return _check_value(value, option, where)
    if dataclasses.is_dataclass(hint):
        return check_record(hint, value, where)  # type: ignore[arg-type]
    if not _fits(value, hint):
        raise ValueError(f"{where}: expected {_name(hint)}, got {_kind(value)}")
    if origin is tuple:
        for i, item in enumerate(value):
            _check_value(item, args[0], f"{where}[{i}]")
    elif origin is dict and args[1] is not Any:
        for key, item in value.items():
            _check_value(item, args[1], f"{where}[{key!r}]")
    return None


def _fits(value: Any, hint: Any) -> bool:
    """Does ``value`` have the JSON shape of ``hint``? (a bool is not a number here)"""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, list | tuple)
    if origin is dict:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)
    return False


def _name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "null")


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def check_relpath(relpath: str, folder: Folder, suffix: str, where: str) -> None:
    """A file the manifest lists must lie in its own folder of the store: no absolute
    paths, no '..', nothing a reader or a clean-up could follow out of the store."""
    path = PurePosixPath(relpath)
    inside = (
        not path.is_absolute()
        and ".." not in path.parts
        and "\\" not in relpath
        and len(path.parts) >= 2
        and path.parts[0] == folder
        and path.name.endswith(suffix)
    )
    if not inside:
        raise ValueError(f"{where}: {relpath!r} is not a {folder}/…{suffix} file of the store")


def check_parquet_part(relpath: str, folder: Folder, where: str) -> None:
    check_relpath(relpath, folder, PARQUET_SUFFIX, where)


def check_manifest(data: Any, where: str) -> None:
    """The shape of a manifest, and every file it names inside its folder of the store."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {_kind(data)}")
    check_record(Manifest, {k: v for k, v in data.items() if k != "format_version"}, where)
    for key, folder in _PART_LISTS.items():
        for i, relpath in enumerate(data.get(key, ())):
            check_parquet_part(relpath, folder, f"{where}.{key}[{i}]")
    if data.get("index") is not None:
        check_relpath(data["index"], Folder.INDEX, INDEX_SUFFIX, f"{where}.index")
    for i, entry in enumerate(data.get("label_sets", ())):
        check_parquet_part(entry["matrix"], Folder.LABELSETS, f"{where}.label_sets[{i}].matrix")
        if entry.get("examples") is not None:
            where_examples = f"{where}.label_sets[{i}].examples"
            check_parquet_part(entry["examples"], Folder.LABELSETS, where_examples)
        for j, relpath in enumerate(entry.get("parts", ())):
            check_parquet_part(relpath, Folder.PREDICTIONS, f"{where}.label_sets[{i}].parts[{j}]")
    for relpath in data.get("files", {}):
        check_relpath(relpath, _folder_of(relpath, where), "", f"{where}.files")


_PART_LISTS = {
    "embedding_parts": Folder.EMBEDDINGS,
    "failure_parts": Folder.FAILURES,
    "tombstone_parts": Folder.TOMBSTONES,
    "example_parts": Folder.LABELSETS,
    "thumbnail_parts": Folder.THUMBNAILS,
}


def _folder_of(relpath: str, where: str) -> Folder:
    top = PurePosixPath(relpath).parts[:1]
    try:
        return Folder(top[0] if top else "")
    except ValueError:
        raise ValueError(f"{where}: {relpath!r} is not a file of the store") from None


def check_store_file(data: Any, where: str) -> None:
    """store.json: a format version, the model identity, and how to load the model."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {_kind(data)}")
    for key in ("format_version", "model", "model_source"):
        if key not in data:
            raise ValueError(f"{where}: key {key!r} is missing")
    check_record(ModelIdentity, data["model"], f"{where}.model")
    check_record(ModelSpec, data["model_source"], f"{where}.model_source")
