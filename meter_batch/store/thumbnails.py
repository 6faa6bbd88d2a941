"""Thumbnails kept in the store: small WebP pictures keyed by the image's content hash.

Parts (`thumbnails/thumbs-<run>.parquet`: content_hash, webp, width, height) are staged
and committed like every other part, so a crash leaves no half-written cache and
`verify` checks them. Keyed by the bytes, not the path: a renamed or copied image
reuses its thumbnail, and a thumbnail never goes stale (an edited file has another
hash). A report shows thumbnails from here even after their image files are gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from meter_batch.store.commit import Store, write_parquet_staged
from meter_batch.store.layout import thumbnail_part
from meter_batch.store.read import read_columns
from meter_batch.store.schema import CONTENT_HASH_BYTES

THUMBNAILS_SCHEMA = pa.schema(
    [
        pa.field("content_hash", pa.binary(CONTENT_HASH_BYTES), nullable=False),
        pa.field("webp", pa.binary(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Thumbnail:
    content_hash: bytes
    webp: bytes
    width: int
    height: int


def cached_hashes(store: Store) -> set[bytes]:
    """The content hashes the store has thumbnails of."""
    found: set[bytes] = set()
    for relpath in store.manifest.thumbnail_parts:
        column = read_columns(store.checked(relpath), ["content_hash"]).column("content_hash")
        found.update(column.to_pylist())
    return found


def read_thumbnails(store: Store, hashes: Iterable[bytes]) -> dict[bytes, Thumbnail]:
    """The stored thumbnails of ``hashes`` (those the store has)."""
    wanted = pa.array(sorted(set(hashes)), pa.binary(CONTENT_HASH_BYTES))
    found: dict[bytes, Thumbnail] = {}
    if not len(wanted):
        return found
    for relpath in store.manifest.thumbnail_parts:
        table = read_columns(store.checked(relpath), THUMBNAILS_SCHEMA.names)
        table = table.filter(pc.is_in(table.column("content_hash"), value_set=wanted))
        for row in table.to_pylist():
            found[row["content_hash"]] = Thumbnail(**row)
    return found


def stage_thumbnails(store: Store, run_id: str, thumbnails: list[Thumbnail]) -> str:
    """Write one part of new thumbnails into staging/; the caller commits it."""
    relpath = thumbnail_part(run_id)
    ordered = sorted(thumbnails, key=lambda t: t.content_hash)
    table = pa.table(
        {
            "content_hash": [t.content_hash for t in ordered],
            "webp": [t.webp for t in ordered],
            "width": [t.width for t in ordered],
            "height": [t.height for t in ordered],
        },
        schema=THUMBNAILS_SCHEMA,
    )
    write_parquet_staged(store, table, relpath)
    return relpath
