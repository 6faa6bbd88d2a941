"""`meter-batch serve STORE`: the store loaded once (model, index, paths), then HTTP
until Ctrl-C or SIGTERM, on 127.0.0.1 unless told otherwise (with a warning: there is no
authentication). uvicorn runs the Starlette app; its own logging is kept off the
terminal but for errors, and our log line says where to point a browser."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from meter_batch.config import ModelSpec, ServeSettings
from meter_batch.errors import ConfigError
from meter_batch.serve.app import build_app
from meter_batch.serve.live_store import LiveStore

log = logging.getLogger("meter_batch")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def check_host(host: str) -> None:
    """Refuse an address this machine cannot bind; warn about one others can reach."""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ConfigError(
            f"host {host!r} is not an address of this machine ({exc.strerror})"
        ) from exc
    if host not in LOOPBACK:
        log.warning(
            "serving on %s: anyone who can reach this machine can search the store and see "
            "its images (there is no authentication); the default is 127.0.0.1",
            host,
        )


def make_server(
    root: Path, settings: ServeSettings, model: ModelSpec | None = None
) -> uvicorn.Server:
    """The server, its store loaded, not yet listening (tests run it in a thread)."""
    check_host(settings.host)
    if settings.report is not None and not (settings.report / "index.html").is_file():
        raise ConfigError(
            f"--report {settings.report}: no index.html there (meter-batch report -o DIR)"
        )
    live = LiveStore(root, model)
    config = uvicorn.Config(
        build_app(live, settings), host=settings.host, port=settings.port,
        log_level="warning", access_log=False, lifespan="off",
    )  # fmt: skip
    return uvicorn.Server(config)


def serve(
    root: Path,
    settings: ServeSettings,
    model: ModelSpec | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    server = make_server(root, settings, model)
    started = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await started(sockets)
        url = f"http://{_shown(settings.host)}:{bound_port(server)}/"
        log.info("serving %s at %s (Ctrl-C stops)", root, url)
        if on_ready is not None:
            on_ready(url)

    server.startup = startup  # type: ignore[method-assign]
    server.run()


def bound_port(server: uvicorn.Server) -> int:
    """The port it listens on (the one the system chose, for --port 0)."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host
