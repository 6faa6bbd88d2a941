"""The server the serve tests talk to: one per module, on a free local port, in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from meter_batch.config import ServeSettings
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.classify_run import classify
from meter_batch.serve.serve_run import bound_port, make_server
from meter_batch.store.catalog import run_query
from tests.helpers import Served, encode_config, labels_toml, make_images


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, configs: dict[str, Path]) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    images, store = root / "images", root / "store"
    relpaths = make_images(images, 14)
    outside = root / "secret.png"
    Image.new("RGB", (40, 30), "red").save(outside)
    (images / "link.png").symlink_to(outside)  # encode follows it; serve must not hand it out
    encode(encode_config(images, store, configs["vit"], workers=0), False)
    classify(store, labels_toml(root), interactive=False)
    report = root / "report"
    report.mkdir()
    (report / "index.html").write_text("<h1>the report</h1>")
    settings = ServeSettings(port=0, max_upload_mb=1, report=report)
    server = make_server(store, settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    rows = run_query(store, "SELECT path, image_id FROM images").to_pylist()
    ids = {row["path"]: row["image_id"] for row in rows}
    yield Served(f"http://127.0.0.1:{bound_port(server)}", store, images, relpaths, ids)
    server.should_exit = True
    thread.join(10)
