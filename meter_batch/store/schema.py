"""Arrow schemas and column names: the contract between the writer, readers and sql/."""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 2  # 2: frames column, pixel policy in the model identity
CONTENT_HASH_BYTES = 16

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
