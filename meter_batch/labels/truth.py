"""A truth file: which label each of some stored images really has (`evaluate`).

CSV with a header: ``label`` and either ``path`` (as stored, with the store's prefix) or
``image_id``; other columns are ignored, so a team's own sheet can be used as it is.
Labels are read as label ids are (NFC, stripped). A path given twice with two labels is
an error; given twice with one label, once.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from meter_batch.errors import ConfigError, InputError
from meter_batch.labels.label_sets import normal_text

TruthKey = Literal["path", "image_id"]


@dataclass(frozen=True)
class Truth:
    file: Path
    sha256: str  # of the file's bytes: an evaluation names the truth it was measured on
    key: TruthKey
    keys: tuple[str | int, ...]
    labels: tuple[str, ...]


def read_truth(path: Path) -> Truth:
    if path.is_dir():
        raise ConfigError(f"truth file {path} is a folder; give a CSV file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"truth file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read truth file {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"truth file {path} is not UTF-8 text ({exc.reason})") from exc
    key, rows = _rows(path, text)
    return Truth(path, hashlib.sha256(data).hexdigest(), key, *_unique(path, key, rows))


def _rows(path: Path, text: str) -> tuple[TruthKey, list[tuple[int, str, str]]]:
    reader = csv.DictReader(text.splitlines())
    columns = set(reader.fieldnames or ())
    keys = [k for k in ("path", "image_id") if k in columns]
    if "label" not in columns or len(keys) != 1:
        found = ", ".join(reader.fieldnames or ()) or "none"
        raise ConfigError(
            f"truth file {path} needs a header with `label` and one of `path` or "
            f"`image_id`; its columns: {found}"
        )
    key: TruthKey = "path" if keys == ["path"] else "image_id"
    try:
        rows = [(reader.line_num, row[key] or "", row["label"] or "") for row in reader]
    except csv.Error as exc:
        raise ConfigError(f"truth file {path}, line {reader.line_num}: {exc}") from exc
    return key, rows


def _unique(
    path: Path, key: TruthKey, rows: list[tuple[int, str, str]]
) -> tuple[tuple[str | int, ...], tuple[str, ...]]:
    found: dict[str | int, str] = {}
    for line, raw_key, raw_label in rows:
        label = normal_text(raw_label)
        if not label:
            raise ConfigError(f"truth file {path}, line {line}: the label is empty")
        value = _key_value(path, line, key, raw_key)
        if found.setdefault(value, label) != label:
            raise ConfigError(
                f"truth file {path}, line {line}: {key} {value!r} is labelled both "
                f"{found[value]!r} and {label!r}"
            )
    if not found:
        raise ConfigError(f"truth file {path} has no rows")
    return tuple(found), tuple(found.values())


def _key_value(path: Path, line: int, key: TruthKey, raw: str) -> str | int:
    if key == "path":
        if not raw:
            raise ConfigError(f"truth file {path}, line {line}: the path is empty")
        return raw
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"truth file {path}, line {line}: image_id {raw!r} is not a whole number"
        ) from None
