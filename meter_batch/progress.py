"""Progress on long work: a tqdm bar on a terminal, plain log lines elsewhere (cron, CI)."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm

log = logging.getLogger("meter_batch")

LOG_EVERY_S = 10.0


class Progress:
    """Counts done items; shows a bar when stderr is a terminal, else logs every 10 s."""

    def __init__(self, total: int, what: str, interactive: bool | None = None) -> None:
        self.total, self.what, self.done = total, what, 0
        self.started = self._last_log = time.monotonic()
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar = (
            tqdm(total=total, unit="img", desc=what, dynamic_ncols=True) if interactive else None
        )

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.info("%s: %d/%d (%.1f img/s)", self.what, self.done, self.total, self.rate())

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.close()
