"""`meter-batch serve` over real HTTP: a server on a free local port in a thread, asked
with httpx (and raw sockets, for paths a client would normalize). Answers are compared
with the CLI's own search, a brute-force cosine over the stored vectors, the catalog."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from meter_batch.config import ServeSettings
from meter_batch.errors import ConfigError
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.search import search
from meter_batch.serve.serve_run import check_host
from meter_batch.store.catalog import run_query
from tests.helpers import Served, encode_config, make_images, stored_vectors


def test_text_search_answers_as_the_cli_search_does(served):
    answer = served.get("/api/search", text="a round analog meter", k=5)
    assert answer.status_code == 200
    reference = search(served.store, "a round analog meter", k=5)
    assert [(h["image_id"], h["path"]) for h in answer.json()["hits"]] == [
        (h.image_id, h.path) for h in reference
    ]
    assert [h["score"] for h in answer.json()["hits"]] == pytest.approx(
        [h.score for h in reference], abs=1e-5
    )


def test_an_uploaded_image_finds_itself_first(served):
    relpath = served.relpaths[3]
    data = (served.images / relpath).read_bytes()
    answer = httpx.post(f"{served.url}/api/search/image", params={"k": 3}, content=data)
    assert answer.status_code == 200
    top = answer.json()["hits"][0]
    assert (top["image_id"], top["path"]) == (served.ids[relpath], relpath)
    assert top["score"] > 0.999
    reference = search(served.store, image=served.images / relpath, k=3)
    assert [h["image_id"] for h in answer.json()["hits"]] == [h.image_id for h in reference]


def test_neighbours_of_a_stored_image_are_the_brute_force_cosines(served):
    vectors = stored_vectors(served.store)  # path -> float16 vector
    paths = sorted(vectors)
    matrix = np.stack([vectors[p].astype(np.float32) for p in paths])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    me = served.relpaths[5]
    cosines = matrix @ matrix[paths.index(me)]
    expected = [paths[i] for i in np.argsort(-cosines)[:4]]
    answer = served.get(f"/api/images/{served.ids[me]}/neighbours", k=4).json()
    assert [h["path"] for h in answer["hits"]] == expected
    assert answer["hits"][0]["path"] == me


def test_an_images_predictions_are_the_catalogs(served):
    image_id = served.ids[served.relpaths[0]]
    answer = served.get(f"/api/images/{image_id}").json()
    reference = run_query(
        served.store,
        "SELECT label_set, label, prob FROM latest_predictions WHERE image_id = $id::BIGINT "
        "ORDER BY label_set, prob DESC",
        {"id": str(image_id)},
    ).to_pylist()
    assert [{k: p[k] for k in ("label_set", "label", "prob")} for p in answer["predictions"]] == (
        reference
    )
    assert len(reference) == 1 and answer["path"] == served.relpaths[0]  # the one set


def test_thumbnails_and_originals_come_from_the_image_root(served):
    relpath = served.relpaths[1]
    image_id = served.ids[relpath]
    thumb = served.get(f"/thumbs/{image_id}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    picture = Image.open(io.BytesIO(thumb.content))
    assert picture.format == "WEBP" and max(picture.size) <= 128
    original = served.get(f"/images/{image_id}")
    assert original.content == (served.images / relpath).read_bytes()
    assert served.get("/images/999999").status_code == 404


def test_a_symlink_out_of_the_image_root_is_never_served(served):
    link = served.ids["link.png"]  # encoded: scan follows symlinked files
    for path in (f"/images/{link}", f"/thumbs/{link}"):
        answer = served.get(path)
        assert answer.status_code == 404, path
        assert b"PNG" not in answer.content


def _raw_status(served: Served, target: str) -> tuple[int, bytes]:
    """A GET of ``target`` exactly as written (httpx would remove the dot segments)."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "target",
    ["/report/../../../../etc/passwd", "/report/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
     "/report/..%2f..%2f..%2fetc%2fpasswd", "/static/../app.py", "/static/..%2fapp.py",
     "/static/index.html", "/report//etc/passwd"],
)  # fmt: skip
def test_no_path_leads_outside_the_served_folders(served, target):
    status, body = _raw_status(served, target)
    assert status in (400, 404), (target, status)
    assert b"root:" not in body and b"import" not in body


def test_the_report_folder_and_the_page_are_served(served):
    assert served.get("/report/").text == "<h1>the report</h1>"
    page = served.get("/")
    assert page.headers["content-type"].startswith("text/html") and 'id="search"' in page.text
    script = served.get("/static/serve.js")
    assert script.status_code == 200 and "/api/search" in script.text


def test_bad_requests_get_one_json_line(served):
    assert served.get("/api/search", text="  ").json() == {"error": "the search text is empty"}
    answer = served.get("/api/search", text="meter", k=0)
    assert answer.status_code == 400 and "k must be a whole number" in answer.json()["error"]
    big = b"\xff" * (2**20 + 1)  # over --max-upload-mb 1
    answer = httpx.post(f"{served.url}/api/search/image", content=big)
    assert answer.status_code == 413 and "over 1 MiB" in answer.json()["error"]
    answer = httpx.post(f"{served.url}/api/search/image", content=b"not an image")
    assert answer.status_code == 400 and "cannot use the image sent" in answer.json()["error"]


def test_a_new_commit_is_served_without_a_restart(served, configs):
    before = served.get("/api/status").json()
    assert before["images"] == 15  # 14 pictures and the symlink
    new = make_images(served.images / "later", 3, seed=42)
    encode(encode_config(served.images, served.store, configs["vit"], workers=0), False)
    after = served.get("/api/status").json()
    assert after["images"] == 18 and after["commit"] > before["commit"]
    found = served.get("/api/search/image", k=1)  # a GET there is not a route
    assert found.status_code == 405
    data = (served.images / "later" / new[0]).read_bytes()
    top = httpx.post(f"{served.url}/api/search/image", params={"k": 1}, content=data).json()
    assert top["hits"][0]["path"] == f"later/{new[0]}"


def test_it_listens_on_loopback_unless_told_and_warns_when_told(caplog):
    assert ServeSettings().host == "127.0.0.1"
    with caplog.at_level(logging.WARNING, logger="meter_batch"):
        check_host("127.0.0.1")
        assert caplog.records == []
        check_host("0.0.0.0")
    assert "there is no authentication" in caplog.text
    with pytest.raises(ConfigError, match="is not an address of this machine"):
        check_host("no-such-host.invalid")


def test_an_upload_without_a_length_is_cut_off_at_the_limit(served):
    def body() -> Iterator[bytes]:
        for _ in range(3):
            yield b"\xff" * 2**19  # 1.5 MiB in all, chunked: no Content-Length to trust

    answer = httpx.post(f"{served.url}/api/search/image", content=body())
    assert answer.status_code == 413
