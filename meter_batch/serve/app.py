"""The HTTP routes of `meter-batch serve`, all read-only: JSON under /api/, the search
page, thumbnails, originals and a report folder. Files are only ever served from the
package's static folder, the report folder given, or an image root a run recorded (the
stored path resolved inside it); anything else is a 404."""

from __future__ import annotations

import dataclasses
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from meter_batch.config import SearchSettings, ServeSettings
from meter_batch.errors import MeterBatchError
from meter_batch.labels.search import hits
from meter_batch.serve.live_store import ImageInfo, LiveStore, Snapshot
from meter_batch.store.catalog import run_query

log = logging.getLogger("meter_batch")
STATIC = resources.files("meter_batch.serve").joinpath("static")
MAX_K = 1000
_PREDICTIONS = (
    "SELECT label_set, label_set_version, label, prob, margin, abstained "
    "FROM latest_predictions WHERE image_id = $id::BIGINT ORDER BY label_set, prob DESC"
)


def build_app(live: LiveStore, settings: ServeSettings) -> Starlette:
    api = _Api(live, settings)
    routes = [
        Route("/", api.page),
        Route("/static/{name}", api.static),
        Route("/api/status", api.status),
        Route("/api/search", api.search_text),
        Route("/api/search/image", api.search_image, methods=["POST"]),
        Route("/api/images/{image_id:int}", api.image),
        Route("/api/images/{image_id:int}/neighbours", api.neighbours),
        Route("/thumbs/{image_id:int}", api.thumbnail),
        Route("/images/{image_id:int}", api.original),
        Route("/report/{path:path}", api.report),
    ]
    handlers = {HTTPException: _json_error, MeterBatchError: _store_error}
    return Starlette(routes=routes, exception_handlers=handlers)


async def _json_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def _store_error(request: Request, exc: Exception) -> Response:
    """A run-level problem met while answering (a damaged part, a query that fails): its
    one line, as the CLI would print it, and no traceback on the server's terminal."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": str(exc)}, status_code=500)


class _Api:
    def __init__(self, live: LiveStore, settings: ServeSettings) -> None:
        self.live = live
        self.settings = settings
        self.report_root = settings.report.resolve() if settings.report is not None else None

    async def page(self, request: Request) -> Response:
        return Response(STATIC.joinpath("index.html").read_bytes(), media_type="text/html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in {"serve.js", "serve.css"}:  # the package's own files, by name only
            raise HTTPException(404, f"no static file {name!r}")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(STATIC.joinpath(name).read_bytes(), media_type=kind)

    async def status(self, request: Request) -> Response:
        snapshot = await run_in_threadpool(self.live.current)
        manifest = snapshot.store.manifest
        return JSONResponse(
            {"store": str(self.live.root), "commit": manifest.seq, "images": len(snapshot.images),
             "model": snapshot.store.identity.architecture,
             "label_sets": sorted(manifest.names()),
             "report": self.report_root is not None}
        )  # fmt: skip

    async def search_text(self, request: Request) -> Response:
        text = request.query_params.get("text", "")
        k = _k(request)
        return await run_in_threadpool(self._answer, lambda s: s.searcher.text_query(text), k)

    async def search_image(self, request: Request) -> Response:
        data = await _body_within(request, self.settings.max_upload_mb * 2**20)
        k = _k(request)
        return await run_in_threadpool(self._answer, lambda s: s.searcher.image_data_query(data), k)

    async def neighbours(self, request: Request) -> Response:
        image_id, k = request.path_params["image_id"], _k(request)
        return await run_in_threadpool(self._answer, lambda s: s.searcher.stored_query(image_id), k)

    def _answer(self, make_query: Any, k: int) -> Response:
        started = time.perf_counter()
        snapshot = self.live.current()
        try:
            found = snapshot.searcher.nearest(make_query(snapshot), k)
        except MeterBatchError as exc:
            raise HTTPException(400, str(exc)) from exc
        paths = {i: snapshot.images[i].path for i, _ in found if i in snapshot.images}
        rows = [dataclasses.asdict(hit) for hit in hits(found, paths)]
        seconds = round(time.perf_counter() - started, 4)
        return JSONResponse(
            {"commit": snapshot.store.manifest.seq, "seconds": seconds, "hits": rows}
        )

    async def image(self, request: Request) -> Response:
        _, info = await run_in_threadpool(self._image_of, request)
        rows = await run_in_threadpool(
            run_query, self.live.root, _PREDICTIONS, {"id": str(info.image_id)}
        )
        return JSONResponse(
            {"image_id": info.image_id, "path": info.path, "run_id": info.run_id,
             "content_hash": info.content_hash.hex(), "predictions": rows.to_pylist()}
        )  # fmt: skip

    async def thumbnail(self, request: Request) -> Response:
        snapshot, info = await run_in_threadpool(self._image_of, request)
        webp = await run_in_threadpool(self.live.thumbnail, snapshot, info)
        if webp is None:
            raise HTTPException(404, f"no thumbnail of image {info.image_id}: its file is gone")
        return Response(webp, media_type="image/webp", headers={"Cache-Control": "max-age=3600"})

    async def original(self, request: Request) -> Response:
        snapshot, info = await run_in_threadpool(self._image_of, request)
        data = await run_in_threadpool(snapshot.original, info)
        if data is None:
            raise HTTPException(404, f"image {info.image_id}: its file is gone or has changed")
        return Response(data, media_type=_media_type(info.path))

    def _image_of(self, request: Request) -> tuple[Snapshot, ImageInfo]:
        snapshot = self.live.current()
        image_id = request.path_params["image_id"]
        info = snapshot.info(image_id)
        if info is None:
            raise HTTPException(404, f"no live image {image_id} in the store")
        return snapshot, info

    async def report(self, request: Request) -> Response:
        if self.report_root is None:
            raise HTTPException(404, "no report: start serve with --report DIR")
        wanted = request.path_params["path"] or "index.html"
        file = (self.report_root / wanted).resolve()
        if not file.is_relative_to(self.report_root) or not file.is_file():
            raise HTTPException(404, f"no report file {wanted!r}")
        return FileResponse(file)


def _k(request: Request) -> int:
    raw = request.query_params.get("k", str(SearchSettings.k))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_K:
        raise HTTPException(400, f"k must be a whole number from 1 to {MAX_K}, not {raw!r}")
    return int(raw)


async def _body_within(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes (a client
    may send no Content-Length, or a false one: the bytes are counted as they come)."""
    too_big = HTTPException(413, f"the image is over {limit // 2**20} MiB (--max-upload-mb)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    if not size:
        raise HTTPException(400, "send the image's bytes as the request body")
    return b"".join(chunks)


_MEDIA = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
}  # fmt: skip


def _media_type(path: str) -> str:
    return _MEDIA.get(Path(path).suffix.lower(), "application/octet-stream")
