"""search: text -> image and image -> image, from Python and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from meter_batch.cli import main
from meter_batch.errors import ConfigError
from meter_batch.labels.search import search
from meter_batch.model.encoder import encode_texts
from meter_batch.model.loading import load_model
from meter_batch.store.catalog import run_query


def test_image_query_finds_itself_first(store):
    images, root, _ = store
    query = sorted(images.rglob("*.png"))[0]
    hits = search(root, image=query, k=5)
    assert hits[0].path == str(query.relative_to(images))
    assert hits[0].score == pytest.approx(1.0, abs=5e-3)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_text_query_ranks_by_cosine_with_the_text_embedding(store):
    _, root, spec = store
    hits = search(root, text="回転式メーター", k=14)
    query = encode_texts(load_model(spec), ["回転式メーター"])[0].numpy()
    table = run_query(root, "SELECT image_id, path, embedding FROM images").to_pylist()
    cosine = {r["image_id"]: float(np.asarray(r["embedding"]) @ query) for r in table}
    expected = sorted(cosine, key=lambda i: -cosine[i])
    assert [h.image_id for h in hits] == expected
    for hit in hits:
        assert hit.score == pytest.approx(cosine[hit.image_id], abs=2e-3)
    assert {h.path for h in hits} == {r["path"] for r in table}


def test_search_needs_exactly_one_query(store):
    _, root, _ = store
    with pytest.raises(ConfigError, match="exactly one"):
        search(root)


def test_search_cli_prints_json_lines(store, capsys):
    images, root, _ = store
    code = main(["search", "--store", str(root), "--image", str(images / "sub0/img-000.jpg"),
                 "-k", "2", "--format", "json"])  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rank"] for h in lines] == [1, 2] and lines[0]["path"] == "sub0/img-000.jpg"


def test_every_image_finds_itself_with_a_cosine_of_at_most_one(store):
    images, root, _ = store
    for query in sorted(images.rglob("*.*")):
        top = search(root, image=query, k=1)[0]
        assert top.path == str(query.relative_to(images))
        assert 0.99 <= top.score <= 1.0  # float16 rows read up to ~1.0003 unclamped
