"""Crash points for fault-injection tests; inert unless METER_BATCH_CRASH_AT is set.

``METER_BATCH_CRASH_AT=parquet:3`` makes the process SIGKILL itself the 3rd time it
reaches the point named ``parquet``: the same as an operator's `kill -9` at exactly
that moment, but repeatable. ``METER_BATCH_PAUSE_AT=locked:2.5`` sleeps 2.5 s there
instead (to make two runs overlap). Points, in the order a run meets them:

    locked      the store lock is held          scan      after the walk
    batch       after each encoded batch         parquet   a part written, not renamed
    vectors     a vectors file written           faiss     index written, not checked
    rename      between renames of a commit      manifest  manifest temp written, not renamed
    committed   right after a manifest rename
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

_seen: Counter[str] = Counter()


def point(name: str) -> None:
    crash = os.environ.get("METER_BATCH_CRASH_AT")
    pause = os.environ.get("METER_BATCH_PAUSE_AT")
    if not crash and not pause:
        return
    _seen[name] += 1
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
