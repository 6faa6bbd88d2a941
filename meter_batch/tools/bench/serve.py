"""`bench serve`: `meter-batch serve` over a synthetic store of --n images, asked over
real HTTP (the standard library's http.client, one kept-alive connection, as a page or a
script would).

The store holds random unit vectors recorded as the model's (the shipped demo model, or
an open_clip architecture with random weights: RN50 costs what the production model's
text encoder costs), with a FAISS index. The server runs as the CLI runs it, in its own
process; timed: distinct text searches (the model is warm, no answer is cached), the
neighbours of stored images, searches by an uploaded JPEG. Each figure is the latency
the client saw (median, 95th percentile), beside the server's own time for the search.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from meter_batch.config import BenchServeSettings, ModelSpec
from meter_batch.model.loading import load_model
from meter_batch.store.rebuild_index import rebuild_index
from meter_batch.tools.bench.classify import build_synthetic_store
from meter_batch.tools.demo import demo_model

WORDS = ["デジタルメーター(7セグ)", "回転式メーター", "アナログメーター丸型", "a rusty gas meter",
         "an electricity meter with a round dial", "water meter, blue housing"]  # fmt: skip


def run(settings: BenchServeSettings) -> list[dict[str, Any]]:
    spec = demo_model() if settings.model == "demo" else ModelSpec(settings.model, "none")
    identity = load_model(spec).identity
    root = settings.dir / "serve-store"
    started = time.perf_counter()
    build_synthetic_store(root, settings.n, identity.embed_dim, model=(identity, spec))
    rebuild_index(root)
    build_s = round(time.perf_counter() - started, 1)
    try:
        with _server(root) as (url, process):
            result = _measure(url, settings)
            result["server_peak_rss_mib"] = _peak_rss_mib(process.pid)
        result["server_exit"] = process.returncode  # SIGTERM, as systemd stops it: 143
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [{"n": settings.n, "model": identity.architecture, "build_s": build_s, **result}]


@contextlib.contextmanager
def _server(root: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`meter-batch serve ROOT --port 0` in its own process, until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "meter_batch", "serve", str(root), "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:
            found = re.search(r" at (http://\S+/) \(Ctrl-C stops\)", line)
            if found:
                break
        else:
            raise RuntimeError(f"serve exited with {process.wait()} before listening")
        yield found.group(1), process
    finally:
        process.terminate()
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()


def _measure(url: str, settings: BenchServeSettings) -> dict[str, Any]:
    client = _Client(url)
    try:
        first_ms = client.get("/api/search", {"text": "a meter", "k": 20})[0]
        texts = [f"{WORDS[i % len(WORDS)]} {i}" for i in range(settings.requests)]
        text = [client.get("/api/search", {"text": t, "k": 20}) for t in texts]
        ids = [(i * 7919) % settings.n for i in range(50)]
        neighbours = [client.get(f"/api/images/{i}/neighbours", {"k": 20}) for i in ids]
        upload = _jpeg()
        image = [client.post("/api/search/image", {"k": 20}, upload) for _ in range(20)]
    finally:
        client.close()
    return {
        "first_text_ms": round(first_ms, 1),
        **_figures("text", text),
        **_figures("neighbours", neighbours),
        **_figures("image", image),
    }


class _Client:
    """One persistent HTTP/1.1 connection; each call: (client ms, the server's ms)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        self.connection = http.client.HTTPConnection(host, parts.port, timeout=120)

    def get(self, path: str, params: dict[str, Any]) -> tuple[float, float]:
        return self._ask("GET", path, params, None)

    def post(self, path: str, params: dict[str, Any], body: bytes) -> tuple[float, float]:
        return self._ask("POST", path, params, body)

    def _ask(
        self, method: str, path: str, params: dict[str, Any], body: bytes | None
    ) -> tuple[float, float]:
        started = time.perf_counter()
        self.connection.request(method, f"{path}?{urllib.parse.urlencode(params)}", body)
        answer = self.connection.getresponse()
        data = answer.read()
        seconds = time.perf_counter() - started
        if answer.status != 200:
            raise RuntimeError(f"{method} {path}: {answer.status} {data[:200]!r}")
        return seconds * 1000, json.loads(data)["seconds"] * 1000

    def close(self) -> None:
        self.connection.close()


def _figures(name: str, timings: list[tuple[float, float]]) -> dict[str, float]:
    client = sorted(t for t, _ in timings)
    return {
        f"{name}_requests": len(timings),
        f"{name}_median_ms": round(statistics.median(client), 1),
        f"{name}_p95_ms": round(client[int(0.95 * (len(client) - 1))], 1),
        f"{name}_server_median_ms": round(statistics.median(s for _, s in timings), 1),
    }


def _jpeg() -> bytes:
    picture = Image.radial_gradient("L").convert("RGB").resize((640, 480))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'N':>9} {'model':<16} {'route':<11} {'median ms':>10} {'p95 ms':>8} "
             f"{'server ms':>10}"]  # fmt: skip
    for r in results:
        for route in ("text", "neighbours", "image"):
            lines.append(
                f"{r['n']:>9,} {r['model']:<16} {route:<11} {r[f'{route}_median_ms']:>10.1f} "
                f"{r[f'{route}_p95_ms']:>8.1f} {r[f'{route}_server_median_ms']:>10.1f}"
            )
        lines.append(
            f"first text search {r['first_text_ms']:.1f} ms; server peak RSS "
            f"{r['server_peak_rss_mib']:,.1f} MiB; store built in {r['build_s']} s"
        )
    return "\n".join(lines)
