"""Incremental runs: changed, touched, deleted, renamed and re-added files; a rerun with no
change; an empty root refused; failed files not retried; roots with and without prefixes."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from meter_batch.errors import ConfigError, InputError
from meter_batch.ingest.encode_run import encode
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from meter_batch.store.index import load_index
from meter_batch.tools.samples import sample_image
from tests.helpers import (
    assert_consistent,
    encode_config,
    encode_images,
    live,
    read_parts,
    snapshot,
)


def test_changed_touched_deleted_renamed_and_readded(tmp_path, image_dir, configs):
    images, relpaths = image_dir
    store = tmp_path / "store"
    encode(encode_config(images, store, configs["vit"], workers=0), False)
    before = live(store)
    changed, touched, deleted, renamed, readded = relpaths[:5]
    sample_image(random.Random(99), (120, 90)).save(images / changed)  # new content
    stat = (images / touched).stat()
    os.utime(images / touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (images / deleted).unlink()
    (images / renamed).rename(images / "renamed.png")
    parked = (images / readded).read_bytes()
    (images / readded).unlink()

    summary = encode(encode_config(images, store, configs["vit"], workers=0), False)
    counts = (summary.encoded, summary.touched, summary.superseded, summary.deleted)
    assert counts == (2, 1, 1, 3) and summary.skipped == 9
    after = live(store)
    assert set(after) == (set(relpaths) - {deleted, renamed, readded}) | {"renamed.png"}
    assert after[changed]["image_id"] not in {r["image_id"] for r in before.values()}
    assert after[touched]["image_id"] != before[touched]["image_id"]
    assert np.allclose(after[touched]["embedding"], before[touched]["embedding"])
    assert np.allclose(after["renamed.png"]["embedding"], before[renamed]["embedding"], atol=2e-3)
    assert not np.allclose(after[changed]["embedding"], before[changed]["embedding"], atol=1e-2)
    reasons = run_query(store, "SELECT path, reason FROM tombstones ORDER BY path").to_pylist()
    assert sorted((r["path"], r["reason"]) for r in reasons) == sorted(
        [
            (changed, "superseded"),
            (touched, "superseded"),
            (deleted, "deleted"),
            (renamed, "deleted"),
            (readded, "deleted"),
        ]
    )
    assert_consistent(store)

    (images / readded).write_bytes(parked)
    third = encode(encode_config(images, store, configs["vit"], workers=0), False)
    assert (third.encoded, third.deleted) == (1, 0)
    assert readded in live(store)
    assert_consistent(store)


def test_no_change_rerun_writes_nothing(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(encode_config(images, store, configs["vit"], workers=0), False)
    before = snapshot(store)
    again = encode(encode_config(images, store, configs["vit"], workers=0), False)
    assert (again.encoded, again.skipped, again.commits) == (0, 14, 0)
    assert snapshot(store) == before


def test_empty_root_is_refused_instead_of_deleting_everything(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(encode_config(images, store, configs["vit"], workers=0), False)
    shutil.rmtree(images)
    images.mkdir()
    before = snapshot(store)
    with pytest.raises(InputError, match="refusing to mark them all deleted"):
        encode(encode_config(images, store, configs["vit"], workers=0), False)
    assert snapshot(store) == before


def test_failed_file_is_not_retried_until_it_changes(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert encode(encode_config(images, store, configs["vit"], workers=0), False).failed == 1
    assert encode(encode_config(images, store, configs["vit"], workers=0), False).failed == 0
    Image.new("RGB", (40, 40), "red").save(images / "broken.jpg", format="JPEG")
    fixed = encode(encode_config(images, store, configs["vit"], workers=0), False)
    assert (fixed.encoded, fixed.failed) == (1, 0)
    assert run_query(store, "SELECT count(*) FROM failures").column(0).to_pylist() == [0]
    assert "broken.jpg" in live(store)


def test_unprefixed_and_prefixed_roots_do_not_mix(tmp_path, image_dir, configs):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(encode_config(images, store, configs["vit"], workers=0), False)
    with pytest.raises(ConfigError, match="one unprefixed root or only prefixed"):
        encode(encode_config(images, store, configs["vit"], workers=0, path_prefix="b/"), False)


def test_second_run_over_the_same_files_encodes_nothing(tmp_path, image_dir, configs):
    images, _ = image_dir
    encode_images(images, tmp_path / "store", configs["vit"], "none", workers=0, exact=True)
    again = encode_images(images, tmp_path / "store", configs["vit"], "none", workers=0, exact=True)
    assert (again.scanned, again.encoded, again.skipped, again.commits) == (14, 0, 14, 0)
    ids = read_parts(tmp_path / "store", "embeddings").column("image_id").to_pylist()
    assert sorted(ids) == list(range(14))
    store = open_store(tmp_path / "store")
    assert load_index(store.path(store.manifest.index or "")).ntotal == 14
