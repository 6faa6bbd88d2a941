"""Arrow schemas: the contract between the writers, the readers and sql/.

Parts (embeddings, failures, tombstones, predictions) have the columns written here;
the catalog's `runs` and `label_sets` tables take theirs from the records in
records.py, so a new field of a record is a new column without a second declaration.
"""

from __future__ import annotations

import hashlib
import types
import typing
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from meter_batch.store.records import (
    CurrentVersion,
    EvaluationRecord,
    LabelSetEntry,
    RunRecord,
    ordered_fields,
)

CONTENT_HASH_BYTES = 16


def content_hash(data: bytes) -> bytes:
    """The `content_hash` of an image file's bytes (how a touched or copied file is known)."""
    return hashlib.blake2b(data, digest_size=CONTENT_HASH_BYTES).digest()


# Columns every embeddings part holds; `embedding` is appended with the store's dimension.
_IMAGE_FIELDS = [
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    # Raw file-name bytes, only for names that are not valid UTF-8 (`path` is then a
    # readable rendering with U+FFFD where the undecodable bytes were).
    pa.field("path_bytes", pa.binary()),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("mtime_ns", pa.int64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("frames", pa.int32(), nullable=False),  # > 1: animated; the first frame is embedded
    pa.field("content_hash", pa.binary(CONTENT_HASH_BYTES), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
]

FAILURES_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("path_bytes", pa.binary()),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


# A tombstone ends an image row ("deleted", "superseded"), or with a null image_id, a
# standing failure of a file that is gone ("deleted").
TOMBSTONES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("path_bytes", pa.binary()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float16(), dim)


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema([*_IMAGE_FIELDS, pa.field("embedding", embedding_type(dim), nullable=False)])


def readable_path(path_bytes: bytes) -> tuple[str, bytes | None]:
    """(`path`, `path_bytes`) columns for a relative path given as raw bytes."""
    try:
        return path_bytes.decode("utf-8"), None
    except UnicodeDecodeError:
        return path_bytes.decode("utf-8", errors="replace"), path_bytes


_TEXT = pa.dictionary(pa.int32(), pa.string())


PREDICTION_FIELDS = [
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("label_set", _TEXT, nullable=False),
    pa.field("label_set_version", _TEXT, nullable=False),
    pa.field("label", _TEXT, nullable=False),
    pa.field("prob", pa.float32(), nullable=False),
    pa.field("margin", pa.float32(), nullable=False),
    pa.field("abstained", pa.bool_(), nullable=False),
]


def predictions_schema(top_k: int) -> pa.Schema:
    labels = pa.list_(pa.field("item", _TEXT), top_k)
    return pa.schema(
        [
            *PREDICTION_FIELDS,
            pa.field("top_labels", labels, nullable=False),
            pa.field("top_probs", pa.list_(pa.float32(), top_k), nullable=False),
            pa.field("logit_scale", pa.float32(), nullable=False),
        ]
    )


_ARROW_TYPES: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    tuple[str, ...]: pa.list_(pa.string()),
    tuple[float, ...]: pa.list_(pa.float64()),
}


def record_schema(
    record: type, overrides: Mapping[str, pa.DataType], leave_out: tuple[str, ...] = ()
) -> pa.Schema:
    """A table schema from a record's fields: each hint's Arrow type (``X | None`` as X),
    or the override (timestamps, JSON text)."""
    hints = typing.get_type_hints(record)
    fields = []
    for name in ordered_fields(record):
        if name in leave_out:
            continue
        kind = overrides.get(name) or _ARROW_TYPES[_without_none(hints[name])]
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _without_none(hint: Any) -> Any:
    if isinstance(hint, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


RUNS_SCHEMA = record_schema(RunRecord, {"finished_at": pa.timestamp("s", tz="UTC")})
CURRENT_SCHEMA = record_schema(CurrentVersion, {"since": pa.timestamp("us", tz="UTC")})
EVALUATIONS_SCHEMA = record_schema(EvaluationRecord, {"evaluated_at": pa.timestamp("us", tz="UTC")})
LABEL_SETS_SCHEMA = record_schema(
    LabelSetEntry,
    {
        "created_at": pa.timestamp("us", tz="UTC"),
        "classified_at": pa.timestamp("us", tz="UTC"),
        "logit_scale_setting": pa.string(),  # JSON: a number or "learned"
        "few_shot": pa.string(),  # JSON: the fitted hyper-parameters
    },
    leave_out=("matrix", "parts", "examples"),
)
