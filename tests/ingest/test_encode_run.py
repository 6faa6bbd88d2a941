"""encode: embeddings equal open_clip's reference loop; ids, paths and FAISS agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meter_batch.store.commit import open_store
from meter_batch.store.index import index_ids, load_index, search
from tests.helpers import embeddings_of, encode_images, read_parts, reference_embeddings

# Compared with the reference loop, every encode here is exact (no DCT scaling).


@pytest.mark.parametrize("workers", [0, 2])
def test_embeddings_equal_reference_loop(tmp_path, image_dir, configs, vit_checkpoint, workers):
    images, relpaths = image_dir
    summary = encode_images(
        images,
        tmp_path / "store",
        configs["vit"],
        str(vit_checkpoint),
        workers=workers,
        exact=True,
        batch_size=5,
    )
    assert (summary.scanned, summary.encoded, summary.failed) == (14, 14, 0)

    table = read_parts(tmp_path / "store", "embeddings")
    stored = embeddings_of(table)
    paths = table.column("path").to_pylist()
    assert sorted(paths) == sorted(relpaths)
    reference = reference_embeddings(configs["vit"], vit_checkpoint, [images / p for p in paths])
    cosine = (torch.from_numpy(stored) * reference).sum(dim=1) / torch.from_numpy(stored).norm(
        dim=1
    )
    assert cosine.min().item() >= 0.999, cosine
    assert np.abs(stored - reference.numpy()).max() < 2e-3


def test_resnet_architecture_equals_reference(tmp_path, image_dir, configs):
    images, _ = image_dir
    torch.manual_seed(3)
    import open_clip

    open_clip.add_model_config(configs["resnet"])
    checkpoint = tmp_path / "rn.safetensors"
    from safetensors.torch import save_file

    save_file(open_clip.create_model("mb-tiny-resnet").state_dict(), str(checkpoint))
    encode_images(
        images,
        tmp_path / "store",
        configs["resnet"],
        str(checkpoint),
        workers=0,
        exact=True,
        batch_size=4,
    )
    table = read_parts(tmp_path / "store", "embeddings")
    paths = [images / p for p in table.column("path").to_pylist()]
    reference = reference_embeddings(configs["resnet"], checkpoint, paths)
    assert np.abs(embeddings_of(table) - reference.numpy()).max() < 2e-3


def test_ids_paths_and_faiss_agree(tmp_path, image_dir, configs):
    images, _ = image_dir
    encode_images(
        images, tmp_path / "store", configs["vit"], "none", workers=0, exact=True, batch_size=4
    )
    table = read_parts(tmp_path / "store", "embeddings")
    ids = table.column("image_id").to_numpy()
    assert sorted(ids.tolist()) == list(range(14))  # unique, dense, allocated from 0
    store = open_store(tmp_path / "store")
    index = load_index(store.path(store.manifest.index or ""))
    assert index.ntotal == table.num_rows == 14
    assert sorted(index_ids(index).tolist()) == sorted(ids.tolist())
    stored = embeddings_of(table)
    for image_id, vector in zip(ids, stored, strict=True):
        assert np.allclose(index.reconstruct(int(image_id)), vector, atol=1e-3)
    scores, found = search(index, stored, 1)
    assert found[:, 0].tolist() == ids.tolist()
    assert np.allclose(scores[:, 0], 1.0, atol=5e-3)


def test_rows_carry_file_facts(tmp_path, image_dir, configs):
    images, _ = image_dir
    summary = encode_images(
        images, tmp_path / "store", configs["vit"], "none", workers=0, exact=True
    )
    table = read_parts(tmp_path / "store", "embeddings").to_pylist()
    from PIL import Image

    for row in table:
        path = images / row["path"]
        assert row["size"] == path.stat().st_size
        assert row["mtime_ns"] == path.stat().st_mtime_ns
        assert (row["width"], row["height"]) == Image.open(path).size
        assert row["run_id"] == summary.run_id
        assert row["path_bytes"] is None
        assert len(row["content_hash"]) == 16


def test_broken_files_are_failure_rows_and_the_rest_encodes(tmp_path, image_dir, configs):
    images, relpaths = image_dir
    good = (images / relpaths[0]).read_bytes()
    (images / "cut.jpg").write_bytes((images / "sub0/img-000.jpg").read_bytes()[:400])
    (images / "page.JPG").write_text("<html><body>404</body></html>")
    (images / "empty.png").write_bytes(b"")
    assert good  # the originals stay untouched
    summary = encode_images(
        images, tmp_path / "store", configs["vit"], "none", workers=0, exact=True, batch_size=4
    )
    assert (summary.scanned, summary.encoded, summary.failed) == (17, 14, 3)
    failures = {r["path"]: r for r in read_parts(tmp_path / "store", "failures").to_pylist()}
    assert {p: r["kind"] for p, r in failures.items()} == {
        "cut.jpg": "truncated",
        "page.JPG": "unidentified",
        "empty.png": "unidentified",
    }
    assert "<html>" in failures["page.JPG"]["message"]
    assert failures["empty.png"]["message"] == "empty file (0 bytes)"
    assert failures["cut.jpg"]["size"] == 400
    encoded = read_parts(tmp_path / "store", "embeddings").column("path").to_pylist()
    assert sorted(encoded) == sorted(relpaths)


def test_empty_folder_commits_an_empty_run(tmp_path, configs):
    (tmp_path / "images").mkdir()
    summary = encode_images(
        tmp_path / "images", tmp_path / "store", configs["vit"], "none", workers=0, exact=True
    )
    assert (summary.scanned, summary.encoded, summary.failed) == (0, 0, 0)
    store = open_store(tmp_path / "store")
    assert store.manifest.seq == 1 and len(store.manifest.runs) == 1
    assert load_index(store.path(store.manifest.index or "")).ntotal == 0
