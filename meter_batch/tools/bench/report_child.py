"""The child process of `bench report`: one `report`, its wall time, peak RSS and folder
size as one JSON line. Its own module so that it imports only what `meter-batch report`
imports (no torch, no open_clip), and its RSS is the command's."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from meter_batch.config import ReportSettings
from meter_batch.report.report_run import report
from meter_batch.tools.bench.common import peak_rss_mib


def measure_report(root: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result = report(root, (), None, out, ReportSettings())
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "report_s": round(seconds, 2),
        "peak_rss_mib": peak_rss_mib(),
        "folder_mib": round(size / 2**20, 2),
        "placeholders": result.thumbnails_missing,
    }


if __name__ == "__main__":
    print(json.dumps(measure_report(Path(sys.argv[1]), Path(sys.argv[2]))))
