"""Crash points for fault-injection tests; inert unless METER_BATCH_CRASH_AT is set.

``METER_BATCH_CRASH_AT=parquet:3`` makes the process SIGKILL itself the 3rd time it
reaches the point named ``parquet``: the same as an operator's `kill -9` at exactly
that moment, but repeatable. ``METER_BATCH_PAUSE_AT=locked:2.5`` sleeps 2.5 s there
instead (to make two runs overlap). ``METER_BATCH_FAIL_AT=vectors:2`` raises ENOSPC
there instead, the 2nd time: a disk that fills at exactly that write. Points, in the
order a run meets them:

    locked      the store lock is held          scan      after the walk
    batch       after each encoded batch         parquet   a part written, not renamed
    vectors     a vectors file written           faiss     index written, not checked
    predictions a prediction batch written       rename    between renames of a commit
    manifest    manifest temp written, not renamed
    committed   right after a manifest rename    catalog   catalog built, not renamed
    store_file  store.json written, not renamed
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import Counter

_seen: Counter[str] = Counter()


WRITE_POINTS = ("parquet", "vectors", "faiss", "predictions", "rename", "manifest", "catalog")


def point(name: str) -> None:
    crash = os.environ.get("METER_BATCH_CRASH_AT")
    pause = os.environ.get("METER_BATCH_PAUSE_AT")
    fail = os.environ.get("METER_BATCH_FAIL_AT")
    if not crash and not pause and not fail:
        return
    _seen[name] += 1
    if fail:
        target, _, count = fail.partition(":")
        if target == name and _seen[name] == int(count or 1):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if crash:
        target, _, count = crash.partition(":")
        if target == name and _seen[name] == int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)
    if pause:
        target, _, seconds = pause.partition(":")
        if target == name:
            time.sleep(float(seconds or 1))


def decode_hook(path: bytes) -> None:
    """METER_BATCH_DECODE_HANG / _CRASH=<substring>: a decoder that hangs or segfaults on
    files whose path contains the substring (for the worker-fault tests)."""
    hang = os.environ.get("METER_BATCH_DECODE_HANG")
    if hang and hang.encode() in path:
        time.sleep(3600)
    crash = os.environ.get("METER_BATCH_DECODE_CRASH")
    if crash and crash.encode() in path:
        import faulthandler

        faulthandler.disable()  # a deliberate crash: no traceback dump in the test log
        os.kill(os.getpid(), signal.SIGSEGV)
