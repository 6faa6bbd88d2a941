"""Lookups of live images in a store: by path, and by the bytes they hold (every copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

from meter_batch.store.commit import open_store
from meter_batch.store.read import live_ids_with, live_refs_of
from meter_batch.store.schema import content_hash
from tests.helpers import encode_images, make_images


def test_every_live_copy_of_the_same_bytes_is_found_and_a_deleted_one_is_not(
    tmp_path: Path, configs: dict[str, Path]
) -> None:
    images = tmp_path / "images"
    relpaths = make_images(images, 4)
    original = images / relpaths[0]
    for copy in ("copy-a.png", "gone/copy-b.png"):
        (images / copy).parent.mkdir(exist_ok=True)
        shutil.copy(original, images / copy)
    encode_images(images, tmp_path / "s", str(configs["vit"]), workers=0)
    shutil.rmtree(images / "gone")
    encode_images(images, tmp_path / "s", str(configs["vit"]), workers=0)  # tombstones copy-b
    store = open_store(tmp_path / "s")
    by_path = live_refs_of(store, "path", [relpaths[0], "copy-a.png", "gone/copy-b.png"])
    assert sorted(by_path) == sorted([relpaths[0], "copy-a.png"])  # the deleted one: not live
    digest = content_hash(original.read_bytes())
    assert {ref.content_hash for ref in by_path.values()} == {digest}
    copies = {ref.image_id for ref in by_path.values()}
    assert live_ids_with(store, "content_hash", [digest]) == copies and len(copies) == 2
    assert live_ids_with(store, "content_hash", []) == set()
