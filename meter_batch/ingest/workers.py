"""Decoded batches from DataLoader worker processes, surviving workers that die or hang.

A decoder that segfaults or is OOM-killed takes its worker process down, and one that
hangs stalls it; DataLoader then raises (worker killed) or times out. Neither ends the
run: the batches that were in flight are decoded again file by file, each in a fresh
process with a deadline, so the culprit is recorded as a `decode_error` and every other
file is decoded; then a new loader carries on with the rest.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from meter_batch.ingest.decode import (
    Decoded,
    DecodedBatch,
    ImageFiles,
    collate_decoded,
    configure_decoder_process,
    worker_init,
)
from meter_batch.store.records import FailureKind, decoder_fault

log = logging.getLogger("meter_batch")
PREFETCH = 4


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int
    workers: int
    pin_memory: bool
    decode_timeout: float  # seconds one file may take before it is declared hung

    @property
    def batch_timeout(self) -> float:
        # A batch of healthy files decodes well inside this; only a stuck worker exceeds it.
        return self.decode_timeout + 2.0 * self.batch_size


def decoded_batches(
    dataset: ImageFiles, positions: Sequence[int], settings: LoaderSettings
) -> Iterator[DecodedBatch]:
    """Batches over ``positions`` in order; worker deaths and hangs become failure rows."""
    if settings.workers == 0:
        configure_decoder_process(in_worker=False)  # no isolation without worker processes
        yield from _loader(dataset, positions, settings)
        return
    _no_async_worker_errors()
    start = 0
    while start < len(positions):
        delivered = 0
        try:
            for batch in _loader(dataset, positions[start:], settings):
                delivered += len(batch.indices) + len(batch.failures) + len(batch.jpegs)
                yield batch
            return
        except Exception as exc:
            # worker deaths and timeouts, and anything a worker raised (re-raised by torch
            # as "Caught X in DataLoader worker process N"): isolate; other errors are ours.
            # A worker that dies while the main process fetches the shared memory of a
            # batch it sent shows as a reset connection to its resource sharer instead.
            if "DataLoader" not in str(exc) and not isinstance(exc, ConnectionError | EOFError):
                raise
            log.warning("decoder worker failed (%s); retrying its files one by one", exc)
            start += delivered
            window = settings.batch_size * settings.workers * PREFETCH
            suspects = positions[start : start + window]
            for offset in range(0, len(suspects), settings.batch_size):
                chunk = suspects[offset : offset + settings.batch_size]
                yield _isolated_batch(dataset, chunk, settings.decode_timeout)
            start += len(suspects)


def _no_async_worker_errors() -> None:
    """Keep worker deaths inside the loader's __next__, where decoded_batches handles them.

    DataLoader installs a SIGCHLD handler that raises in the main thread wherever it happens
    to be (mid-encode, mid-Parquet-write) when a worker dies. Without it, the loader still
    notices dead workers itself, within seconds, and raises from __next__. The flag is
    torch's own "already installed" switch.
    """
    from torch.utils.data._utils import signal_handling

    signal_handling._SIGCHLD_handler_set = True


class _Watchdog:
    """Kills the loader's workers when the consumer has waited ``seconds`` for one batch.

    DataLoader's own timeout would also delay noticing a dead worker by the whole timeout;
    instead the loader runs without one (it notices deaths within seconds) and a hang is
    turned into a death here. Only time spent waiting counts, not the consumer's own work.
    """

    def __init__(self, iterator: Any, seconds: float) -> None:
        self.iterator, self.seconds = iterator, seconds
        self.waiting_since: float | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="decode-watchdog", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.5):
            since = self.waiting_since
            if since is not None and time.monotonic() - since > self.seconds:
                for worker in getattr(self.iterator, "_workers", []):
                    if worker.is_alive():
                        worker.kill()
                self.waiting_since = None

    def next(self) -> Any:
        self.waiting_since = time.monotonic()
        try:
            return next(self.iterator)
        finally:
            self.waiting_since = None

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _loader(
    dataset: ImageFiles, positions: Sequence[int], settings: LoaderSettings
) -> Iterator[DecodedBatch]:
    subset = torch.utils.data.Subset(dataset, list(positions))
    workers = settings.workers
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_decoded,
        pin_memory=settings.pin_memory,
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=PREFETCH if workers else None,
    )
    if not workers:
        yield from loader
        return
    iterator = iter(loader)
    watchdog = _Watchdog(iterator, settings.batch_timeout)
    try:
        while True:
            try:
                batch = watchdog.next()
            except StopIteration:
                return
            yield batch
    finally:
        watchdog.stop()
        _end_workers(iterator)


def _end_workers(iterator: Any) -> None:
    """Stop the workers now. Left to DataLoader (when the iterator is collected), workers
    of a run stopped by Ctrl-C or SIGTERM outlive it by seconds; they only decode, so
    nothing is lost by killing them."""
    workers = getattr(iterator, "_workers", [])
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    for worker in workers:
        worker.join(timeout=2)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # its queues and pin-memory thread; the workers are gone already


def _isolated_batch(dataset: ImageFiles, positions: Sequence[int], timeout: float) -> DecodedBatch:
    return collate_decoded([isolated_decode(dataset, p, timeout) for p in positions])


def isolated_decode(dataset: ImageFiles, position: int, timeout: float) -> Decoded:
    """Decode one file in a fresh process; a crash or a hang is this file's failure."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_decode_and_send, args=(dataset, position, send), daemon=True)
    process.start()
    send.close()
    result: Decoded | None = None
    answered = receive.poll(timeout)
    if answered:
        try:
            result = pickle.loads(receive.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError):
            result = None  # it died before or while sending: its exit code says how
    process.join(5 if answered else 0)
    hung = not answered and process.is_alive()
    if process.is_alive():
        process.kill()
        process.join()
    receive.close()
    if result is not None:
        return result
    if hung:
        what = f"did not finish within {timeout:g} s (timeout)"
    elif process.exitcode is not None and process.exitcode < 0:
        what = f"process died (signal {-process.exitcode})"
    else:
        what = f"process exited with code {process.exitcode}"
    return Decoded(position, kind=FailureKind.DECODER_FAULT, message=decoder_fault(what))


def _decode_and_send(dataset: ImageFiles, position: int, send: object) -> None:
    configure_decoder_process(in_worker=True)
    result = dataset[position]
    # Plain pickle, by value: Connection.send would pass a tensor (a JPEG's bytes) as a
    # shared-memory handle that the parent fetches from this process, after it has exited.
    send.send_bytes(pickle.dumps(result))  # type: ignore[attr-defined]
    send.close()  # type: ignore[attr-defined]
    os._exit(0)  # skip atexit handlers inherited from the parent
