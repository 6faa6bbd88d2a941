"""A damaged or hand-edited store: writers refuse it, readers say one line, verify sees the
damage, repair rebuilds what is derived and says what is lost (issue 15, items 2 and 5-9)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from meter_batch.cli import main
from meter_batch.config import ModelSpec
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.classify_run import classify
from meter_batch.store.commit import open_store
from meter_batch.store.layout import vectors_file
from tests.helpers import (
    assert_consistent,
    encode_config,
    labels_toml,
    live,
    make_images,
    one_error_line,
)

Damaged = tuple[Path, Path, Path, ModelSpec]  # images, store, label file, model


@pytest.fixture
def classified(tmp_path: Path, image_dir, checkpoint_model: ModelSpec) -> Damaged:
    """14 images in 3 embedding parts (5 + 5 + 4), classified once."""
    images, _ = image_dir
    store = tmp_path / "store"
    name, weights = checkpoint_model.name, checkpoint_model.pretrained
    config = encode_config(images, store, name, weights, workers=0, part_rows=5, batch_size=5)
    encode(config, interactive=False)
    labels = labels_toml(tmp_path)
    classify(store, labels, interactive=False)
    return images, store, labels, checkpoint_model


def _encode_args(images: Path, store: Path, model: ModelSpec) -> list[str]:
    return ["-q", "encode", str(images), "--store", str(store), "--model", model.name,
            "--pretrained", model.pretrained, "--workers", "0"]  # fmt: skip


def _newest_manifest(store: Path) -> Path:
    return sorted((store / "manifests").glob("*.json"))[-1]


def _edit_manifest(store: Path, **changes: object) -> None:
    path = _newest_manifest(store)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **changes}))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err  # verify's problem lines go to stderr


# --- item 2: a stale manifest under a higher name -------------------------------------


def test_a_stale_manifest_under_a_higher_name_is_refused_until_repair(classified, capsys):
    images, store, _, model = classified
    newest = _newest_manifest(store)
    shutil.copy(newest, store / "manifests" / "000000000099.json")
    make_images(images / "later", 2, seed=3)
    capsys.readouterr()
    assert main(_encode_args(images, store, model)) == 5
    line = one_error_line(capsys)
    assert "manifests disagree" in line and "000000000099.json" in line and "repair" in line
    assert main(["verify", str(store)]) == 8

    code, out = _run(capsys, "repair", str(store))
    assert code == 0 and "set aside 000000000099.json" in out
    assert (store / "manifests" / "000000000099.json.set-aside").is_file()
    assert main(_encode_args(images, store, model)) == 0
    assert len(live(store)) == 16  # the two new images are visible, nothing was lost
    assert_consistent(store)


# --- item 5: a symlinked store folder ------------------------------------------------


def test_a_symlinked_store_folder_is_refused_and_nothing_outside_is_deleted(
    classified, tmp_path, capsys
):
    images, store, _, model = classified
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    shutil.rmtree(store / "predictions")
    (store / "predictions").symlink_to(outside)
    capsys.readouterr()
    assert main(_encode_args(images, store, model)) == 5
    assert "symbolic link" in one_error_line(capsys)
    assert (outside / "keep.txt").read_text() == "mine"


def test_links_inside_the_store_folders_are_removed_as_links_not_followed(classified, tmp_path):
    images, store, _, model = classified
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (store / "embeddings" / "stray").symlink_to(outside)  # debris: no manifest lists it
    config = encode_config(images, store, model.name, model.pretrained, workers=0)
    make_images(images / "later", 1, seed=3)
    assert encode(config, interactive=False).encoded == 1
    assert not (store / "embeddings" / "stray").exists()
    assert (outside / "keep.txt").read_text() == "mine"


# --- item 6: verify sees damaged content ---------------------------------------------


def _overwrite_middle(path: Path, count: int = 256) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes((b + 1) % 256 for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def test_verify_sees_changed_bytes_in_a_vectors_file_and_quick_sees_sizes(classified, capsys):
    _, store, _, _ = classified
    part = open_store(store).manifest.embedding_parts[1]
    _overwrite_middle(store / vectors_file(part))
    code, out = _run(capsys, "verify", str(store))
    assert code == 8
    assert f"problem: {vectors_file(part)}: its content is not what its commit wrote" in out
    assert _run(capsys, "verify", "--quick", str(store))[0] == 0  # the same size
    assert _run(capsys, "repair", str(store))[0] == 0
    assert_consistent(store)


def test_verify_sees_nan_embeddings_an_older_version_wrote(classified, capsys):
    """Before the encoder checked its output, a NaN checkpoint stored NaN embeddings under
    valid checksums (here: a vectors file rewritten with NaNs, its sum dropped as in a
    store written before checksums)."""
    import numpy as np

    from meter_batch.store.vectors import iter_vectors, write_vectors

    _, store, _, _ = classified
    relpath = vectors_file(open_store(store).manifest.embedding_parts[0])
    ids = np.concatenate([i.copy() for i, _ in iter_vectors(store / relpath)])
    write_vectors(store / relpath, ids, np.full((len(ids), 32), np.nan, np.float16))
    data = json.loads(_newest_manifest(store).read_text())
    _edit_manifest(store, files={k: v for k, v in data["files"].items() if k != relpath})
    code, out = _run(capsys, "verify", str(store))
    assert code == 8 and "its vectors file holds NaN or infinite embeddings" in out


def test_a_truncated_prediction_part_is_caught_by_verify_and_refused_by_writers(classified, capsys):
    _, store, labels, _ = classified
    part = store / open_store(store).manifest.label_sets[0].parts[0]
    part.write_bytes(part.read_bytes()[:-50])
    code, out = _run(capsys, "verify", "--quick", str(store))
    assert code == 8 and "its commit wrote" in out
    assert main(["-q", "classify", "--store", str(store), "--labels", str(labels)]) == 5
    assert "the store is damaged" in one_error_line(capsys)


# --- item 7: repair rebuilds derived files ------------------------------------------


def test_repair_rebuilds_lost_vectors_files_the_index_and_the_catalog(classified, capsys):
    _, store, labels, _ = classified
    before = {r["image_id"]: r for r in _predictions(store)}
    manifest = open_store(store).manifest
    (store / vectors_file(manifest.embedding_parts[0])).unlink()
    vectors = store / vectors_file(manifest.embedding_parts[2])
    vectors.write_bytes(vectors.read_bytes()[:200])
    (store / (manifest.index or "")).unlink()
    (store / "catalog.duckdb").unlink()
    for argv in (["rebuild-index", str(store)], ["classify", "--store", str(store),
                 "--labels", str(labels)]):  # fmt: skip
        assert main(["-q", *argv]) == 5
        assert "the store is damaged" in one_error_line(capsys)

    code, out = _run(capsys, "repair", str(store))
    assert code == 0
    assert out.count("fixed: rebuilt embeddings/") == 2 and "rebuilt the FAISS index (14" in out
    assert_consistent(store)
    shutil.rmtree(store / "predictions")
    (store / "predictions").mkdir()
    _edit_manifest(store, label_sets=[])
    classify(store, labels, interactive=False)  # scored again from the rebuilt vectors
    after = {r["image_id"]: r for r in _predictions(store)}
    assert after == before


def _predictions(store: Path) -> list[dict[str, object]]:
    s = open_store(store)
    rows = []
    for path in s.live_paths("predictions"):
        rows += pq.ParquetFile(path).read(columns=["image_id", "label", "prob"]).to_pylist()
    return rows


def test_repair_says_which_images_a_lost_parquet_part_held_and_can_drop_it(classified, capsys):
    images, store, _, model = classified
    part = open_store(store).manifest.embedding_parts[0]
    (store / part).write_bytes((store / part).read_bytes()[:300])
    code, out = _run(capsys, "repair", str(store))
    assert code == 8
    assert f"lost: {part} has 300 bytes" in out and "its 5 images (ids 0-4)" in out
    assert "--drop-damaged" in out

    code, out = _run(capsys, "repair", "--drop-damaged", str(store))
    assert code == 0 and f"dropped: {part}" in out
    assert len(live(store)) == 9
    assert_consistent(store)
    config = encode_config(images, store, model.name, model.pretrained, workers=0)
    assert encode(config, interactive=False).encoded == 5  # the lost images, encoded again
    assert len(live(store)) == 14
    assert_consistent(store)


def test_dropping_a_lost_tombstone_part_ends_the_rows_it_ended_again(classified, capsys):
    images, store, _, model = classified
    changed = sorted(images.rglob("*.jpg"))[0]
    swap = make_images(images.parent / "swap", 1, seed=11)[0]
    shutil.move(images.parent / "swap" / swap, changed)  # new bytes, same path
    config = encode_config(images, store, model.name, model.pretrained, workers=0)
    assert encode(config, interactive=False).superseded == 1
    (store / open_store(store).manifest.tombstone_parts[-1]).unlink()
    code, out = _run(capsys, "repair", "--drop-damaged", str(store))
    assert code == 0 and "ended 1 older rows" in out
    assert len(live(store)) == 14  # live() fails the test when a path is live twice
    assert_consistent(store)


# --- item 8: writers do not spread damage -------------------------------------------


@pytest.mark.parametrize("damage", ["part listed twice", "next_image_id rewound"])
def test_writers_refuse_a_store_that_breaks_their_invariants(classified, damage, capsys):
    images, store, labels, model = classified
    data = json.loads(_newest_manifest(store).read_text())
    if damage == "part listed twice":
        _edit_manifest(
            store, embedding_parts=[*data["embedding_parts"], data["embedding_parts"][0]]
        )
        expected = "is listed 2 times"
    else:
        _edit_manifest(store, next_image_id=3)
        expected = "next_image_id 3 is not above image id 13"
    make_images(images / "later", 1, seed=3)
    capsys.readouterr()
    for argv in (_encode_args(images, store, model)[1:],
                 ["classify", "--store", str(store), "--labels", str(labels)],
                 ["rebuild-index", str(store)]):  # fmt: skip
        assert main(["-q", *argv]) == 5
        line = one_error_line(capsys)
        assert expected in line and f"meter-batch repair {store}" in line

    assert _run(capsys, "repair", str(store))[0] == 0
    assert open_store(store).manifest.next_image_id == 14
    assert main(_encode_args(images, store, model)) == 0
    assert len(live(store)) == 15
    assert_consistent(store)


# --- item 9: no tracebacks from a damaged store --------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([], "expected an object"),
        ({"seq": "x"}, "seq: expected int"),
        ({"next_image_id": None}, "next_image_id: expected int, got null"),
        ({"label_sets": [1]}, "label_sets[0]: expected an object"),
        ({"embedding_parts": ["../../../../etc/passwd"]}, "is not a embeddings/"),
        ({"index": "/etc/passwd"}, "is not a index/"),
        ({"bogus": 1}, "unknown key 'bogus'"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_line_in_every_command(
    classified, content, expected, capsys
):
    images, store, labels, model = classified
    path = _newest_manifest(store)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(content if isinstance(content, list) else {**data, **content}))
    capsys.readouterr()
    for argv in (["rebuild-index", str(store)], _encode_args(images, store, model)[1:],
                 ["classify", "--store", str(store), "--labels", str(labels)]):  # fmt: skip
        assert main(["-q", *argv]) == 5
        assert expected in one_error_line(capsys)
    code, out = _run(capsys, "verify", str(store))
    assert code == 8 and expected in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": []}, "store.json.model: expected an object"),
        ({"model_source": {"name": 1}}, "model_source.name: expected str"),
        ("[]", "not a meter-batch store file"),
    ],
)
def test_a_store_json_of_the_wrong_shape_is_one_line(classified, change, expected, capsys):
    _, store, labels, _ = classified
    path = store / "store.json"
    text = (
        change
        if isinstance(change, str)
        else json.dumps({**json.loads(path.read_text()), **change})
    )
    path.write_text(text)
    capsys.readouterr()
    for argv in (["rebuild-index", str(store)], ["classify", "--store", str(store),
                 "--labels", str(labels)], ["search", "--store", str(store), "meter"]):  # fmt: skip
        assert main(["-q", *argv]) == 5
        assert expected in one_error_line(capsys)


# each missing file, and the commands that read it: the others still work
MISSING = {
    "embeddings": {"search", "classify", "rebuild-index"},
    "vectors": {"classify", "rebuild-index"},
    "tombstones": {"classify", "rebuild-index"},
    "index": {"search"},
}


@pytest.mark.parametrize("kind", sorted(MISSING))
def test_a_missing_part_is_one_line_in_search_classify_and_rebuild_index(classified, kind, capsys):
    images, store, labels, model = classified
    config = encode_config(images, store, model.name, model.pretrained, workers=0)
    (sorted(images.rglob("*.png"))[0]).unlink()
    encode(config, interactive=False)  # a tombstone part
    manifest = open_store(store).manifest
    missing = {
        "embeddings": manifest.embedding_parts[0],
        "vectors": vectors_file(manifest.embedding_parts[0]),
        "tombstones": manifest.tombstone_parts[0],
        "index": manifest.index or "",
    }[kind]
    (store / missing).unlink()
    capsys.readouterr()
    commands = {"search": ["search", "--store", str(store), "meter"],
                "classify": ["classify", "--store", str(store), "--labels", str(labels)],
                "rebuild-index": ["rebuild-index", str(store)]}  # fmt: skip
    for name, argv in commands.items():
        code = main(["-q", *argv])
        if name in MISSING[kind]:
            assert (code, name) == (5, name)
            assert f"{missing} is missing" in one_error_line(capsys)
        else:
            assert (code, name) == (0, name)
            capsys.readouterr()


# --- every command against every kind of damage --------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _tamper(store: Path, kind: str) -> None:
    manifest = open_store(store).manifest
    entry = manifest.label_sets[0]
    if kind == "truncated embeddings part":
        _truncate(store / manifest.embedding_parts[0])
    elif kind == "changed bytes in a vectors file":
        _overwrite_middle(store / vectors_file(manifest.embedding_parts[1]))
    elif kind == "lost tombstone part":
        (store / manifest.tombstone_parts[0]).unlink()
    elif kind == "truncated prediction part":
        _truncate(store / entry.parts[0])
    elif kind == "lost label matrix":
        (store / entry.matrix).unlink()
    elif kind == "garbage manifest":
        _newest_manifest(store).write_bytes(b"\x00{not json" * 10)
    elif kind == "truncated index":
        _truncate(store / (manifest.index or ""))
    elif kind == "garbage catalog":
        (store / "catalog.duckdb").write_bytes(b"not a database" * 100)
    elif kind == "store.json emptied":
        (store / "store.json").write_text("{}")


TAMPERINGS = [
    "truncated embeddings part",
    "changed bytes in a vectors file",
    "lost tombstone part",
    "truncated prediction part",
    "lost label matrix",
    "garbage manifest",
    "truncated index",
    "garbage catalog",
    "store.json emptied",
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", TAMPERINGS)
def test_no_command_gives_a_traceback_on_a_damaged_store(classified, kind, capsys):
    """Each command exits with a documented code (never 1, the code of a traceback), and
    `repair --drop-damaged` leaves a store that verifies, unless store.json is damaged."""
    images, store, labels, model = classified
    (sorted(images.rglob("*.png"))[0]).unlink()
    encode(encode_config(images, store, model.name, model.pretrained, workers=0), False)
    _tamper(store, kind)
    commands = [
        ["verify", str(store)],
        ["verify", "--quick", str(store)],
        ["query", str(store), "SELECT count(*) FROM images"],
        ["search", "--store", str(store), "meter"],
        ["classify", "--store", str(store), "--labels", str(labels)],
        ["rebuild-index", str(store)],
        _encode_args(images, store, model)[1:],
        ["repair", str(store)],
        ["repair", "--drop-damaged", str(store)],
    ]
    codes = {}
    for argv in commands:
        capsys.readouterr()
        codes[" ".join(argv[:2])] = code = main(["-q", *argv])
        assert code in (0, 2, 5, 8), (argv, code, capsys.readouterr())
    final = main(["verify", str(store)])
    assert final == (8 if kind == "store.json emptied" else 0), (codes, capsys.readouterr())


def test_a_query_that_trips_on_a_damaged_part_says_the_store_is_damaged(classified, capsys):
    _, store, _, _ = classified
    part = open_store(store).manifest.embedding_parts[0]
    _truncate(store / part)
    capsys.readouterr()
    assert main(["query", str(store), "SELECT count(*) FROM images"]) == 5
    assert f"{part} does not read: the store is damaged" in one_error_line(capsys)
    assert main(["query", str(store), "SELECT * FROM nowhere"]) == 2  # a wrong query is 2
    assert "query failed" in one_error_line(capsys)
