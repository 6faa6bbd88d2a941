"""`meter-batch bench classify`: a synthetic store of N random unit vectors written through
the real write path, then, in a fresh process per N so peak RSS is the scorer's own:
the read rate of the stored vectors alone, the classify rate (score + write predictions),
their ratio, the rate of the loop a user would write instead (astype, @, softmax, argmax,
Parquet) and classify / that baseline; the warm rate of few-shot heads (a probe, an
adapter of 16 examples per label); the copy + product rate of each BLAS on one thread
(which one classify uses, and why: scoring.product_kernel_name); and peak RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch
from threadpoolctl import threadpool_limits

from meter_batch.config import BenchClassifySettings, EncodeConfig, ModelSpec
from meter_batch.labels.head import Cache, Head
from meter_batch.labels.predictions import PredictionWriter
from meter_batch.labels.scoring import (
    PRODUCTS,
    SUB_ROWS,
    Scorer,
    ScoreSettings,
    product_kernel_name,
    score_files,
)
from meter_batch.model.identity import ModelIdentity
from meter_batch.store.commit import (
    Store,
    commit,
    locked,
    next_manifest,
    open_for_write,
    open_store,
)
from meter_batch.store.layout import Folder
from meter_batch.store.vectors import BATCH_ROWS, iter_vectors
from meter_batch.store.write import RunWriter
from meter_batch.tools.bench.common import (
    SYNTHETIC_MODEL,
    WRITE_BATCH,
    fake_rows,
    peak_rss_mib,
    synthetic_identity,
)

PART_ROWS = EncodeConfig.part_rows


def build_synthetic_store(
    root: Path,
    rows: int,
    dim: int,
    seed: int = 0,
    model: tuple[ModelIdentity, ModelSpec] | None = None,
) -> None:
    """N random unit float16 vectors, committed through RunWriter + the manifest commit;
    recorded as ``model``'s embeddings when given (so that `serve` can load it)."""
    shutil.rmtree(root, ignore_errors=True)
    generator = torch.Generator().manual_seed(seed)
    identity, source = model or (synthetic_identity(dim), SYNTHETIC_MODEL)
    with locked(root) as lock:
        store = open_for_write(root, identity, source, lock)
        # parts of encode's own size: the scorer maps one file at a time, so a part's
        # size (not N) bounds the pages it holds
        writer = RunWriter(store, "bench", 0, part_rows=PART_ROWS)
        for start in range(0, rows, WRITE_BATCH):
            count = min(WRITE_BATCH, rows - start)
            vectors = torch.randn(count, dim, generator=generator)
            unit = torch.nn.functional.normalize(vectors, dim=1).half().numpy()
            writer.add_images(fake_rows(start, count, unit))
        staged = writer.flush()
        manifest = next_manifest(store, next_image_id=rows, embedding_parts=staged.embeddings)
        commit(store, manifest, staged.files, None)


def measure_scoring(root: Path, labels: int) -> dict[str, Any]:
    """Read rate and classify rate over a store, with the files in the page cache (warm)
    and evicted from it (cold, as after a reboot); run in a fresh process for honest RSS."""
    store = open_store(root)
    files = store.live_paths("vectors")
    dim = store.identity.embed_dim
    matrix = torch.nn.functional.normalize(torch.randn(labels, dim), dim=1).numpy()
    settings = ScoreSettings("bench", "bench", tuple(f"label-{i}" for i in range(labels)), 100.0, 3)
    result: dict[str, Any] = {}
    for cache in ("warm", "cold"):
        result.update(_text_rates(store, files, Scorer(matrix, settings, BATCH_ROWS), cache))
    _read_all(files)  # warm again for the few-shot heads
    for mode, head in few_shot_heads(matrix, EXAMPLES_PER_LABEL).items():
        seconds = _classify_all(store, files, Scorer(head, settings, BATCH_ROWS))
        result[f"warm_{mode}_per_s"] = round(result["n"] / seconds)
    result["product_kernel"] = product_kernel_name()
    result.update({f"product_{k}_per_s": v for k, v in product_rates(dim, labels).items()})
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _text_rates(store: Store, files: list[Path], scorer: Scorer, cache: str) -> dict[str, Any]:
    """Read, classify and baseline rates with the files warm or cold. Warm: the median of
    three classify passes, each one listed (this VM's speed swings by a quarter between
    passes); cold: one, as every pass would need its own eviction."""
    _evict(files) if cache == "cold" else _read_all(files)
    rows, read_s = _read_all(files)
    _evict(files) if cache == "cold" else None
    passes = [_classify_all(store, files, scorer) for _ in range(3 if cache == "warm" else 1)]
    classify_s = statistics.median(passes)
    _evict(files) if cache == "cold" else None
    baseline_s = _baseline_all(store, files, scorer.head.weights, scorer.settings)
    return {
        "n": rows,
        f"{cache}_read_per_s": round(rows / read_s),
        f"{cache}_classify_per_s": round(rows / classify_s),
        f"{cache}_classify_passes_per_s": [round(rows / s) for s in passes],
        f"{cache}_ratio": round(read_s / classify_s, 3),
        f"{cache}_baseline_per_s": round(rows / baseline_s),
        f"{cache}_vs_baseline": round(baseline_s / classify_s, 3),
    }


EXAMPLES_PER_LABEL = 16


def few_shot_heads(matrix: np.ndarray, per_label: int) -> dict[str, Head]:
    """A probe's head (the matrix and a bias) and an adapter's (the matrix and a cache
    of ``per_label`` random unit examples per label), as classify would score them."""
    generator = torch.Generator().manual_seed(1)
    labels, dim = matrix.shape
    keys = torch.nn.functional.normalize(torch.randn(labels * per_label, dim, generator=generator))
    bias = 0.01 * torch.randn(labels, generator=generator)
    cache = Cache(keys.numpy(), np.arange(labels * per_label) % labels, alpha=0.01, beta=5.5)
    return {"probe": Head(matrix, bias=bias.numpy()), "adapter": Head(matrix, cache=cache)}


def product_rates(dim: int, labels: int, rows: int = 4096, repeats: int = 20) -> dict[str, int]:
    """Rows/s of the float16 -> float32 copy + product, SUB_ROWS at a time, one thread,
    with each BLAS: what `product_kernel_name` chooses between."""
    vectors = torch.randn(rows, dim).half()
    columns = torch.nn.functional.normalize(torch.randn(labels, dim), dim=1)
    buffer, out = torch.empty(SUB_ROWS, dim), torch.empty(labels, rows)  # as Scorer lays them
    rates = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        for name, product in PRODUCTS.items():
            started = time.perf_counter()
            for _ in range(repeats):
                for start in range(0, rows, SUB_ROWS):
                    buffer.copy_(vectors[start : start + SUB_ROWS])
                    product(columns, buffer.T, out[:, start : start + SUB_ROWS])
            rates[name] = round(rows * repeats / (time.perf_counter() - started))
    torch.set_num_threads(previous)
    return rates


def _classify_all(store: Store, files: list[Path], scorer: Scorer) -> float:
    (store.root / Folder.STAGING).mkdir(exist_ok=True)
    started = time.perf_counter()
    writer = PredictionWriter(store, "bench", "bench")
    for batch in score_files(files, scorer):
        writer.add(batch)
    writer.finish()
    seconds = time.perf_counter() - started
    shutil.rmtree(store.root / Folder.STAGING, ignore_errors=True)
    return seconds


def _baseline_all(
    store: Store, files: list[Path], matrix: np.ndarray, settings: ScoreSettings
) -> float:
    """What a user would write instead: read the vectors, astype(float32), @, softmax,
    argmax, and write image_id, label, prob to Parquet (pyarrow's defaults)."""
    started = time.perf_counter()
    labels = np.asarray(settings.label_ids)
    transposed = np.ascontiguousarray(matrix.T, dtype=np.float32)
    out = store.root / Folder.STAGING / "baseline.parquet"
    out.parent.mkdir(exist_ok=True)
    schema = pa.schema([("image_id", pa.int64()), ("label", pa.string()), ("prob", pa.float32())])
    with pq.ParquetWriter(out, schema) as writer:
        for path in files:
            for ids, vectors in iter_vectors(path):
                logits = settings.scale * (vectors.astype(np.float32) @ transposed)
                exp = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs = exp / exp.sum(axis=1, keepdims=True)
                best = probs.argmax(axis=1)
                columns = [pa.array(ids), pa.array(labels[best]), pa.array(probs.max(axis=1))]
                writer.write_batch(pa.record_batch(columns, schema=schema))
    seconds = time.perf_counter() - started
    shutil.rmtree(store.root / Folder.STAGING, ignore_errors=True)
    return seconds


def _evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from the disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_all(files: list[Path]) -> tuple[int, float]:
    """Rows/s of reading the vector bytes alone (every record batch brought into memory)."""
    started, rows = time.perf_counter(), 0
    for path in files:
        with pa.OSFile(str(path), "rb") as source:
            reader = ipc.open_file(source)
            for i in range(reader.num_record_batches):
                rows += reader.get_batch(i).num_rows
    return rows, time.perf_counter() - started


def run(settings: BenchClassifySettings) -> list[dict[str, Any]]:
    results = []
    dim, labels = settings.dim, settings.labels
    for rows in settings.n:
        root = settings.dir / f"store-{rows}"
        started = time.perf_counter()
        build_synthetic_store(root, rows, dim)
        build_s = time.perf_counter() - started
        # the store's gigabytes are written back now, not by the kernel during the timings
        os.sync()
        child = subprocess.run(
            [sys.executable, "-m", "meter_batch.tools.bench.classify", str(root), str(labels)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result.update(dim=dim, labels=labels, build_s=round(build_s, 1))
        results.append(result)
        shutil.rmtree(root, ignore_errors=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    header = f"{'N':>10} {'cache':>5} {'read/s':>11} {'classify/s':>11} {'ratio':>6}"
    header += f" {'baseline/s':>11} {'vs baseline':>11} {'peak RSS MiB':>13}"
    lines = [header]
    for r in results:
        for cache in ("warm", "cold"):
            lines.append(
                f"{r['n']:>10,} {cache:>5} {r[cache + '_read_per_s']:>11,} "
                f"{r[cache + '_classify_per_s']:>11,} {r[cache + '_ratio']:>6.3f} "
                f"{r[cache + '_baseline_per_s']:>11,} {r[cache + '_vs_baseline']:>11.3f} "
                f"{r['peak_rss_mib']:>13,.1f}"
            )
    for r in results:
        passes = ", ".join(f"{rate:,}" for rate in r["warm_classify_passes_per_s"])
        lines.append(f"N={r['n']:,} warm classify passes (the median above): {passes}/s")
        lines.append(
            f"N={r['n']:,} warm, {EXAMPLES_PER_LABEL} examples x {r['labels']} labels: "
            f"probe {r['warm_probe_per_s']:,}/s, adapter {r['warm_adapter_per_s']:,}/s"
        )
    last = results[-1]
    rates = ", ".join(f"{k} {last[f'product_{k}_per_s']:,}/s" for k in PRODUCTS)
    lines.append(
        f"copy + product, one thread: {rates}; classify uses {last['product_kernel']} "
        f"(override: METER_BATCH_PRODUCT)"
    )
    if len(results) >= 2:
        growth = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
        lines.append(f"peak RSS at N={results[-1]['n']:,} / N={results[0]['n']:,}: {growth:.3f}x")
    return "\n".join(lines)


if __name__ == "__main__":  # the scoring half, in its own process
    print(json.dumps(measure_scoring(Path(sys.argv[1]), int(sys.argv[2]))))
