"""`meter-batch bench rescan`: a no-change `encode` over many files (a store whose rows
match the tree's stat, as after a real first run) against a bare os.scandir walk."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from meter_batch.config import BenchRescanSettings, EncodeConfig
from meter_batch.ingest.encode_run import encode
from meter_batch.ingest.scan import collect_work
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import commit, locked, next_manifest, open_for_write
from meter_batch.store.records import RunCounts, RunRecord, counts_of
from meter_batch.store.write import ImageRows, RunWriter
from meter_batch.tools.bench.common import (
    SYNTHETIC_MODEL,
    WRITE_BATCH,
    fake_rows,
    peak_rss_mib,
    synthetic_identity,
)


def run(settings: BenchRescanSettings) -> dict[str, Any]:
    """A no-change `encode` over ``files`` files against a bare os.scandir walk of them."""
    files, folder = settings.files, settings.dir
    images, store = folder / "images", folder / "store"
    shutil.rmtree(folder, ignore_errors=True)
    _write_tree(images, files)
    _store_for_tree(images, store)
    config = EncodeConfig(images_dir=images, store=store, model=SYNTHETIC_MODEL, workers=0)
    timings = {"walk": _best_of(3, lambda: _bare_walk(images, stat=False))}
    timings["walk_stat"] = _best_of(3, lambda: _bare_walk(images, stat=True))
    timings["rerun"] = _best_of(3, lambda: _no_change(config))
    result: dict[str, Any] = {"files": files}
    for name, seconds in timings.items():
        result[f"{name}_files_per_s"] = round(files / seconds)
    result["rerun_vs_walk"] = round(timings["rerun"] / timings["walk"], 2)
    result["rerun_vs_walk_stat"] = round(timings["rerun"] / timings["walk_stat"], 2)
    result["peak_rss_mib"] = peak_rss_mib()
    shutil.rmtree(folder, ignore_errors=True)
    return result


def _no_change(config: EncodeConfig) -> None:
    summary = encode(config, interactive=False)
    if summary.encoded or summary.commits or summary.deleted:
        raise RuntimeError(f"the re-run was not a no-change run: {summary}")


def _best_of(rounds: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def _bare_walk(root: Path, stat: bool) -> int:
    count, pending = 0, [os.fsencode(root)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    count += 1
                    if stat:
                        entry.stat()
    return count


def _write_tree(images: Path, files: int, per_folder: int = 100) -> None:
    for number in range(files):
        folder = images / f"{number // per_folder:05d}"
        if number % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"{number:07d}.jpg").write_bytes(b"\xff\xd8")


def _store_for_tree(images: Path, root: Path) -> None:
    """A committed store whose rows match the tree's stat: as after a real first run."""
    work = collect_work(images)
    dim = 16
    with locked(root) as lock:
        store = open_for_write(root, synthetic_identity(dim), SYNTHETIC_MODEL, lock)
        writer = RunWriter(store, "bench", 0, part_rows=250_000)
        for start in range(0, len(work), WRITE_BATCH):
            stop = min(len(work), start + WRITE_BATCH)
            rows = fake_rows(start, stop - start, np.zeros((stop - start, dim), np.float16))
            positions = slice(start, stop)
            writer.add_images(
                ImageRows(
                    relpaths=[work.relpath(i) for i in range(start, stop)],
                    sizes=work.sizes[positions],
                    mtimes_ns=work.mtimes_ns[positions],
                    widths=rows.widths,
                    heights=rows.heights,
                    frames=rows.frames,
                    hashes=rows.hashes,
                    embeddings=rows.embeddings,
                )
            )
        staged = writer.flush()
        counts = RunCounts(len(work), len(work), 0, 0, 0, 0, 0)
        run = RunRecord(
            **counts_of(counts), run_id="bench", finished_at="2026-01-01T00:00:00+00:00"
        )
        manifest = next_manifest(
            store, next_image_id=len(work), embedding_parts=staged.embeddings, runs=(run,)
        )
        commit(store, manifest, staged.files, None)
        refresh_catalog(store)


def table(result: dict[str, Any]) -> str:
    return json.dumps(result)
