"""search (text -> image, image -> image) and the query command."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from meter_batch.cli import main
from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.errors import ConfigError
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.classify_run import classify
from meter_batch.labels.search import search
from meter_batch.model.encoder import encode_texts
from meter_batch.model.loading import load_model
from meter_batch.store.catalog import catalog_is_current, run_query
from meter_batch.store.commit import open_store
from tests.test_classify import labels_toml


@pytest.fixture
def store(tmp_path, image_dir, configs, vit_checkpoint):  # type: ignore[no-untyped-def]
    images, _ = image_dir
    spec = ModelSpec(str(configs["vit"]), str(vit_checkpoint))
    config = EncodeConfig(images_dir=images, store=tmp_path / "store", model=spec, workers=0)
    encode(config, interactive=False)
    return images, tmp_path / "store", spec


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


def test_query_formats_and_named_queries(store, tmp_path, capsys):
    _, root, _ = store
    classify(root, labels_toml(tmp_path), interactive=False)
    capsys.readouterr()
    assert main(["query", str(root), "SELECT count(*) AS n FROM images", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ['"n"', "14"]

    assert main(["query", str(root), "--named", "counts_per_label_per_day",
                 "--param", "label_set=meter-type", "--format", "json"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(r["images"] for r in rows) == 14
    assert main(["query", str(root), "--named", "least_confident",
                 "--param", "label_set=meter-type", "--param", "limit=1"]) == 0  # fmt: skip
    table_text = capsys.readouterr().out
    assert table_text.splitlines()[0].split() == ["label", "image_id", "path", "prob", "margin"]

    out = tmp_path / "result.parquet"
    assert main(["query", str(root), "SELECT image_id FROM images", "--out", str(out)]) == 0
    assert sorted(pq.read_table(out).column(0).to_pylist()) == list(range(14))


def test_label_changes_between_versions(store, tmp_path, capsys):
    _, root, _ = store
    first = classify(root, labels_toml(tmp_path, extra="logit_scale = 3"), False)
    swapped = {"digital": "回転式メーター", "rotary": "デジタルメーター(7セグ)",
               "analog": "アナログメーター丸型"}  # fmt: skip
    second = classify(root, labels_toml(tmp_path, extra="logit_scale = 3", **swapped), False)
    capsys.readouterr()
    versions = [f"old_version={first.version}", f"new_version={second.version}"]
    args = ["query", str(root), "--named", "label_changes", "--format", "json",
            "--param", versions[0], "--param", versions[1]]  # fmt: skip
    assert main(args) == 0
    changed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    old = run_query(root, "SELECT image_id, label FROM predictions WHERE label_set_version = $v",
                    {"v": first.version}).to_pylist()  # fmt: skip
    swap = {"digital": "rotary", "rotary": "digital", "analog": "analog"}
    expected = sorted(r["image_id"] for r in old if swap[r["label"]] != r["label"])
    assert sorted(r["image_id"] for r in changed) == expected and expected


def test_bad_query_is_one_line_exit_2(store, capsys):
    _, root, _ = store
    assert main(["query", str(root), "SELECT nope FROM images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query failed" in err[0]


def test_python_api_covers_the_commands(tmp_path, image_dir, configs):
    from meter_batch import api

    images, _ = image_dir
    summary = api.encode(images, tmp_path / "s", model=str(configs["vit"]), workers=0)
    assert summary.encoded == 14
    result = api.classify(tmp_path / "s", labels_toml(tmp_path), progress=False)
    assert result.scored == 14
    hits = api.search(tmp_path / "s", image=images / "sub0/img-000.jpg", k=1)
    assert hits[0].path == "sub0/img-000.jpg"
    table = api.query(tmp_path / "s", "SELECT count(*) AS n FROM latest_predictions")
    assert table.column("n").to_pylist() == [14]
    exact = api.encode(images, tmp_path / "x", model=str(configs["vit"]), workers=0, exact=True)
    assert exact.encoded == 14
    assert api.query(tmp_path / "x", "SELECT preprocess_path FROM runs").to_pylist() == [
        {"preprocess_path": "exact"}
    ]
    with pytest.raises(ConfigError, match=r"unknown encode option\(s\) exakt; valid: .*exact"):
        api.encode(images, tmp_path / "y", model=str(configs["vit"]), exakt=True)


def _make_catalog_old(root) -> None:  # type: ignore[no-untyped-def]
    """As an older meter-batch left it: no version, no jpeg_decode / compile columns."""
    import duckdb

    with duckdb.connect(str(root / "catalog.duckdb")) as con:
        seq = con.sql("SELECT manifest_seq FROM catalog_info").fetchall()[0][0]
        con.execute("DROP TABLE catalog_info")
        con.execute(
            "CREATE TABLE catalog_info AS SELECT $seq::BIGINT AS manifest_seq", {"seq": seq}
        )
        con.execute("ALTER TABLE runs DROP COLUMN jpeg_decode")


def test_a_catalog_from_an_older_version_is_rebuilt_by_the_next_encode(store):
    images, root, spec = store
    _make_catalog_old(root)
    assert not catalog_is_current(open_store(root))
    with pytest.raises(ConfigError, match=r"jpeg_decode.*out of date.*rebuilds it"):
        run_query(root, "SELECT jpeg_decode FROM runs")
    config = EncodeConfig(images_dir=images, store=root, model=spec, workers=0)
    summary = encode(config, interactive=False)
    assert summary.encoded == 0 and summary.commits == 0  # nothing new, yet ...
    assert catalog_is_current(open_store(root))  # ... the catalog is this version's again
    assert run_query(root, "SELECT jpeg_decode FROM runs").to_pylist() == [
        {"jpeg_decode": "workers"}
    ]


def test_every_image_finds_itself_with_a_cosine_of_at_most_one(store):
    images, root, _ = store
    for query in sorted(images.rglob("*.*")):
        top = search(root, image=query, k=1)[0]
        assert top.path == str(query.relative_to(images))
        assert 0.99 <= top.score <= 1.0  # float16 rows read up to ~1.0003 unclamped


def test_store_and_image_mistakes_are_one_line_errors(store, tmp_path, capsys):
    images, root, _ = store
    assert main(["search", "--store", str(root), "--image", str(images)]) == 3
    assert "is a folder" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nothing")]) == 5  # as search, classify, query
    assert "not a meter-batch store" in capsys.readouterr().err


def test_a_moved_model_gets_a_hint(tmp_path, image_dir, configs, vit_checkpoint, capsys):
    images, _ = image_dir
    moved = tmp_path / "weights.pt"
    moved.write_bytes(vit_checkpoint.read_bytes())
    spec = ModelSpec(str(configs["vit"]), str(moved))
    encode(EncodeConfig(images_dir=images, store=tmp_path / "s", model=spec, workers=0), False)
    moved.rename(tmp_path / "elsewhere.pt")
    assert main(["search", "--store", str(tmp_path / "s"), "digital"]) == 4
    assert "if its files moved, pass --model/--pretrained" in capsys.readouterr().err
