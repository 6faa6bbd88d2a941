"""Run an iterator on a thread, a few items ahead: its I/O (which releases the GIL)
overlaps the consumer's work. Scoring reads vectors files through it; encode decodes
JPEGs on the GPU through it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

_DONE = object()
T = TypeVar("T")


def prefetch(source: Iterator[T], depth: int = 4) -> Generator[T, None, None]:
    """Run ``source`` on a thread, ``depth`` items ahead: file reads (which release the
    GIL) overlap the consumer's arithmetic; encode uses it for GPU JPEG decoding too.
    Errors re-raise in the consumer."""
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put unless the consumer has gone: never block forever on a full queue."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    reader = threading.Thread(target=produce, name="vectors-prefetch", daemon=True)
    reader.start()
    try:
        while (item := slots.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # The reader may be inside a slow next() (a hung decoder waits for its watchdog):
        # a consumer that stops early (an error, Ctrl-C) must not wait for it; it is a daemon.
        reader.join(timeout=2.0)
