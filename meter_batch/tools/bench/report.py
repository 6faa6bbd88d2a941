"""`bench report`: `report` on a big synthetic store, timed, in a fresh process
(`report_child`, which imports what `meter-batch report` does: no torch).

The store is `bench classify`'s (N random unit vectors) with two versions of a label
set of random unit label vectors scored into it, so every section has data: counts,
histograms, galleries, the review queue, what changed, the map. It has no image files:
every thumbnail is a placeholder, so this times the aggregates, the sample and the page
(thumbnails cost a decode each; `bench encode --thumbnails` measures that).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meter_batch.config import BenchReportSettings
from meter_batch.labels.predictions import PredictionWriter, write_label_matrix
from meter_batch.labels.scoring import Scorer, ScoreSettings, score_files
from meter_batch.labels.versions import after_classify
from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import commit, locked, next_manifest, open_existing
from meter_batch.store.records import LabelSetEntry
from meter_batch.store.vectors import BATCH_ROWS
from meter_batch.tools.bench.classify import build_synthetic_store

NAME = "bench"


def add_label_set_versions(root: Path, labels: int, versions: int = 2) -> None:
    """Score ``versions`` versions of a label set (random label vectors, one seed each)
    into the store and commit them; the last one is current."""
    for number in range(versions):
        with locked(root) as lock:
            store = open_existing(root, lock)
            entry = _entry(store.identity.embed_dim, labels, number)
            matrix = _label_vectors(labels, store.identity.embed_dim, number)
            ids = list(entry.labels)
            staged = [write_label_matrix(store, entry.version, ids, [[i] for i in ids], matrix)]
            settings = ScoreSettings(NAME, entry.version, entry.labels, entry.logit_scale, 3)
            writer = PredictionWriter(store, entry.version, f"bench{number}")
            for batch in score_files(
                store.live_paths("vectors"), Scorer(matrix, settings, BATCH_ROWS)
            ):
                writer.add(batch)
            parts = writer.finish()
            now = datetime.now(UTC).isoformat(timespec="microseconds")
            below = store.manifest.next_image_id
            done = replace(entry, parts=tuple(parts), scored_below_id=below, classified_at=now)
            manifest = next_manifest(store, label_sets=(*store.manifest.label_sets, done))
            commit(
                store, after_classify(manifest, done, make_current=True), [*parts, *staged], None
            )
            refresh_catalog(store)


def _label_vectors(labels: int, dim: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(1000 + seed)
    return torch.nn.functional.normalize(torch.randn(labels, dim, generator=generator)).numpy()


def _entry(dim: int, labels: int, number: int) -> LabelSetEntry:
    return LabelSetEntry(
        name=NAME,
        version=f"bench{number:011d}",
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        labels=tuple(f"label-{i}" for i in range(labels)),
        templates=("{}",),
        logit_scale=100.0,
        logit_scale_setting=100.0,
        top_k=3,
        min_prob=0.0,
        min_margin=0.0,
        matrix=f"labelsets/bench{number:011d}.parquet",
    )


def run(settings: BenchReportSettings) -> list[dict[str, Any]]:
    root, out = settings.dir / "store", settings.dir / "report"
    started = time.perf_counter()
    build_synthetic_store(root, settings.n, settings.dim)
    add_label_set_versions(root, settings.labels)
    build_s = time.perf_counter() - started
    os.sync()  # the store's gigabytes written back now, not during the timing
    shutil.rmtree(out, ignore_errors=True)
    child = subprocess.run(
        [sys.executable, "-m", "meter_batch.tools.bench.report_child", str(root), str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(n=settings.n, dim=settings.dim, labels=settings.labels, build_s=round(build_s, 1))
    shutil.rmtree(root, ignore_errors=True)
    return [result]


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'N':>10} {'report s':>9} {'peak RSS MiB':>13} {'folder MiB':>11}"]
    for r in results:
        figures = f"{r['report_s']:>9.2f} {r['peak_rss_mib']:>13,.1f} {r['folder_mib']:>11.2f}"
        lines.append(f"{r['n']:>10,} {figures}")
    return "\n".join(lines)
