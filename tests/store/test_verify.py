"""verify lists every problem of a store; rebuild-index repairs a lost index."""

from __future__ import annotations

import json

from meter_batch.cli import main
from meter_batch.ingest.encode_run import encode
from meter_batch.store.commit import open_store
from meter_batch.store.rebuild_index import rebuild_index
from tests.helpers import assert_consistent, encode_config


def test_verify_lists_every_problem_and_rebuild_index_repairs_the_index(
    tmp_path, image_dir, configs, capsys
):
    images, _ = image_dir
    store = tmp_path / "store"
    encode(
        encode_config(images, store, configs["vit"], workers=0, part_rows=5, batch_size=4), False
    )
    assert main(["verify", str(store)]) == 0
    s = open_store(store)
    (store / (s.manifest.index or "")).unlink()
    assert rebuild_index(store) == 14
    assert_consistent(store)

    s = open_store(store)
    part = store / s.manifest.embedding_parts[0]
    part.write_bytes(part.read_bytes()[:100])  # a part without its footer
    manifest_file = sorted((store / "manifests").glob("*.json"))[-1]
    data = json.loads(manifest_file.read_text())
    data["embedding_parts"].append(data["embedding_parts"][1])  # the same ids twice
    manifest_file.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["verify", str(store)]) == 8
    out, err = capsys.readouterr()
    assert "has 100 bytes, its commit wrote" in err and "more than once" in err
    assert "without a live row" in err
    (line,) = out.splitlines()  # stdout: one JSON line, for scripts; the problems in it too
    summary = json.loads(line)
    assert summary["ok"] is False and summary["notes"] == []
    assert [f"problem: {p}" for p in summary["problems"]] == err.splitlines()


def test_verify_during_a_run_says_it_is_in_progress(tmp_path, image_dir, configs, capsys):
    """A first run between its intermediate commits has no index yet: while its lock is
    held that is a run in progress (exit 0, a note); once no one holds it, a problem."""
    from meter_batch.store.commit import locked

    images, _ = image_dir
    store = tmp_path / "store"
    encode(encode_config(images, store, configs["vit"], workers=0), False)
    manifest_file = sorted((store / "manifests").glob("*.json"))[-1]
    data = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**data, "index": None, "index_current": False}))
    capsys.readouterr()
    with locked(store):
        assert main(["verify", str(store)]) == 0
        out = capsys.readouterr().err
    assert "note: a run holds the store's lock: it is in progress" in out
    assert "note: the manifest lists no FAISS index but the store has live rows" in out
    assert main(["verify", str(store)]) == 8
    assert "problem: the manifest lists no FAISS index" in capsys.readouterr().err
