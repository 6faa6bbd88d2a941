"""Benchmarks that print their figures (never timed tests).

`meter-batch bench classify`: a synthetic store of N random unit vectors written through
the real write path, then, in a fresh process per N so peak RSS is the scorer's own:
the read rate of the stored vectors alone, the classify rate (score + write predictions),
their ratio, and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from meter_batch.config import ModelSpec
from meter_batch.errors import InputError
from meter_batch.labels.predictions import PredictionWriter
from meter_batch.labels.scoring import Scorer, ScoreSettings, score_files
from meter_batch.model.identity import ModelIdentity
from meter_batch.store.commit import (
    Store,
    commit,
    locked,
    next_manifest,
    open_for_write,
    open_store,
)
from meter_batch.store.records import RunCounts, RunRecord, counts_of
from meter_batch.store.vectors import BATCH_ROWS
from meter_batch.store.write import ImageRows, RunWriter

_WRITE_BATCH = 65_536
MODEL_SECONDS = {True: 5.0, False: 10.0}  # how long model capacity is timed: GPU, CPU


SYNTHETIC_MODEL = ModelSpec("synthetic", "none")


def synthetic_identity(dim: int) -> ModelIdentity:
    return ModelIdentity("synthetic", "-", "none", None, 0, False, {}, dim)  # default pixel policy


def build_synthetic_store(root: Path, rows: int, dim: int, seed: int = 0) -> None:
    """N random unit float16 vectors, committed through RunWriter + the manifest commit."""
    shutil.rmtree(root, ignore_errors=True)
    generator = torch.Generator().manual_seed(seed)
    with locked(root) as lock:
        store = open_for_write(root, synthetic_identity(dim), SYNTHETIC_MODEL, lock)
        writer = RunWriter(store, "bench", 0, part_rows=250_000)
        for start in range(0, rows, _WRITE_BATCH):
            count = min(_WRITE_BATCH, rows - start)
            vectors = torch.randn(count, dim, generator=generator)
            unit = torch.nn.functional.normalize(vectors, dim=1).half().numpy()
            writer.add_images(_fake_rows(start, count, unit))
        staged = writer.flush()
        manifest = next_manifest(store, next_image_id=rows, embedding_parts=staged.embeddings)
        commit(store, manifest, staged.files, None)


def _fake_rows(start: int, count: int, vectors: np.ndarray) -> ImageRows:
    return ImageRows(
        relpaths=[f"synthetic/{i:09d}.jpg".encode() for i in range(start, start + count)],
        sizes=np.full(count, 100_000, dtype=np.int64),
        mtimes_ns=np.full(count, 1_700_000_000 * 10**9, dtype=np.int64),
        widths=[640] * count,
        heights=[480] * count,
        frames=[1] * count,
        hashes=[b"\0" * 16] * count,
        embeddings=vectors,
    )


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
        _evict(files) if cache == "cold" else _read_all(files)
        rows, read_s = _read_all(files)
        _evict(files) if cache == "cold" else None
        classify_s = _classify_all(store, files, Scorer(matrix, settings, BATCH_ROWS))
        result.update(
            {
                "n": rows,
                f"{cache}_read_per_s": round(rows / read_s),
                f"{cache}_classify_per_s": round(rows / classify_s),
                f"{cache}_ratio": round(read_s / classify_s, 3),
            }
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _classify_all(store: Store, files: list[Path], scorer: Scorer) -> float:
    (store.root / "staging").mkdir(exist_ok=True)
    started = time.perf_counter()
    writer = PredictionWriter(store, "bench", "bench")
    for batch in score_files(files, scorer):
        writer.add(batch)
    writer.finish()
    seconds = time.perf_counter() - started
    shutil.rmtree(store.root / "staging", ignore_errors=True)
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


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _read_all(files: list[Path]) -> tuple[int, float]:
    """Rows/s of reading the vector bytes alone (every record batch brought into memory)."""
    started, rows = time.perf_counter(), 0
    for path in files:
        with pa.OSFile(str(path), "rb") as source:
            reader = ipc.open_file(source)
            for i in range(reader.num_record_batches):
                rows += reader.get_batch(i).num_rows
    return rows, time.perf_counter() - started


def bench_classify(sizes: list[int], dim: int, labels: int, folder: Path) -> list[dict[str, Any]]:
    results = []
    for rows in sizes:
        root = folder / f"store-{rows}"
        started = time.perf_counter()
        build_synthetic_store(root, rows, dim)
        build_s = time.perf_counter() - started
        child = subprocess.run(
            [sys.executable, "-m", "meter_batch.tools.bench", str(root), str(labels)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result.update(dim=dim, labels=labels, build_s=round(build_s, 1))
        results.append(result)
        shutil.rmtree(root, ignore_errors=True)
    return results


def format_classify_table(results: list[dict[str, Any]]) -> str:
    header = f"{'N':>10} {'cache':>5} {'read/s':>11} {'classify/s':>11} {'ratio':>6}"
    header += f" {'peak RSS MiB':>13}"
    lines = [header]
    for r in results:
        for cache in ("warm", "cold"):
            lines.append(
                f"{r['n']:>10,} {cache:>5} {r[cache + '_read_per_s']:>11,} "
                f"{r[cache + '_classify_per_s']:>11,} {r[cache + '_ratio']:>6.3f} "
                f"{r['peak_rss_mib']:>13,.1f}"
            )
    if len(results) >= 2:
        growth = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
        lines.append(f"peak RSS at N={results[-1]['n']:,} / N={results[0]['n']:,}: {growth:.3f}x")
    return "\n".join(lines)


if __name__ == "__main__":  # the scoring half, in its own process
    print(json.dumps(measure_scoring(Path(sys.argv[1]), int(sys.argv[2]))))


def bench_rescan(files: int, folder: Path) -> dict[str, Any]:
    """A no-change `encode` over ``files`` files against a bare os.scandir walk of them."""
    from meter_batch.config import EncodeConfig, ModelSpec

    images, store = folder / "images", folder / "store"
    shutil.rmtree(folder, ignore_errors=True)
    _write_tree(images, files)
    _store_for_tree(images, store)
    spec = ModelSpec("synthetic", "none")
    config = EncodeConfig(images_dir=images, store=store, model=spec, workers=0)
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


def _no_change(config: Any) -> None:
    from meter_batch.ingest.encode_run import encode

    summary = encode(config, interactive=False)
    if summary.encoded or summary.commits or summary.deleted:
        raise RuntimeError(f"the re-run was not a no-change run: {summary}")


def _best_of(rounds: int, action: Any) -> float:
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
    from meter_batch.ingest.scan import collect_work
    from meter_batch.store.catalog import refresh_catalog

    work = collect_work(images)
    dim = 16
    with locked(root) as lock:
        store = open_for_write(root, synthetic_identity(dim), SYNTHETIC_MODEL, lock)
        writer = RunWriter(store, "bench", 0, part_rows=250_000)
        for start in range(0, len(work), _WRITE_BATCH):
            stop = min(len(work), start + _WRITE_BATCH)
            rows = _fake_rows(start, stop - start, np.zeros((stop - start, dim), np.float16))
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


def bench_encode(
    images: Path | None,
    folder: Path,
    model: Any,
    count: int,
    workers: int,
    batch_size: int,
    device: str,
    exact: bool,
    jpeg_decode: str = "auto",
    compile: bool = False,
) -> dict[str, Any]:
    """Decode capacity, model capacity and end-to-end encode on one folder, and the bound
    (`_bound`: shared or separate hardware)."""
    from meter_batch.config import EncodeConfig

    shutil.rmtree(folder / "store", ignore_errors=True)
    config = EncodeConfig(
        images_dir=images or _generated_images(folder, count),
        store=folder / "store",
        model=model,
        batch_size=batch_size,
        workers=workers,
        device=device,
        exact=exact,
        jpeg_decode=jpeg_decode,
        compile=compile,
    )
    result = _capacities(config)
    from meter_batch.ingest.encode_run import encode

    summary = encode(config, interactive=False)
    if not summary.encoded or not result["decode_per_s"]:
        raise InputError(f"{config.images_dir} holds no image that decodes: nothing to measure")
    result["e2e_per_s"] = round(summary.encoded / summary.pipeline_seconds, 1)
    result["e2e_wall_per_s"] = summary.images_per_s
    result["images"] = summary.encoded
    result["e2e_stage_seconds"] = summary.stage_seconds
    result["e2e_compiled"] = summary.compiled
    result["e2e_decoder_seconds"] = summary.decoder_seconds
    result["e2e_device_decode_per_s"] = _rate(
        summary.encoded, summary.decoder_seconds.get("device_decode")
    )
    result.update(_bound(result))
    result["peak_rss_mib"] = peak_rss_mib()
    shutil.rmtree(folder / "store", ignore_errors=True)
    return result


def _generated_images(folder: Path, count: int) -> Path:
    images = folder / f"images-{count}"  # kept for the next run of the same count
    if not images.is_dir():
        partial = folder / f"images-{count}.partial"  # an interrupted set is not reused
        shutil.rmtree(partial, ignore_errors=True)
        write_bench_images(partial, count)
        partial.rename(images)
    return images


def _bound(result: dict[str, Any]) -> dict[str, Any]:
    """The rate e2e could reach, by what shares hardware:
    - on a CPU, decoding and the model take turns on the same cores: 1/(1/a + 1/b);
    - with a GPU and the workers decoding, they run on different hardware: min(a, b);
    - with JPEGs decoded on the GPU, the workers' part (read, hash, inspect) runs on the
      CPU, but nvjpeg + resize and the model take turns on the GPU: min(a, 1/(1/d + 1/b)),
      d the device decoding's own rate (bench measures it inside a). e2e above that bound
      would mean the two overlap on the GPU (nvjpeg's hardware engine is not the SMs).
    Every GPU result also carries min(a, b), the bound of separate hardware."""
    decode, model_rate = result["decode_per_s"], result["model_per_s"]
    device_decode = result.get("device_decode_per_s")
    if result["device"] == "cpu":
        rule, bound = "1/(1/decode+1/model): shared CPU", _harmonic(decode, model_rate)
    elif device_decode:
        rule = "min(decode, 1/(1/device_decode+1/model)): JPEG decoding shares the GPU"
        bound = min(decode, _harmonic(device_decode, model_rate))
    else:
        rule, bound = "min(decode, model): separate hardware", min(decode, model_rate)
    figures = {"bound": rule, "bound_per_s": round(bound, 1)}
    figures["ratio"] = round(result["e2e_per_s"] / bound, 3)
    if result["device"] != "cpu":
        figures["ratio_to_min_decode_model"] = round(
            result["e2e_per_s"] / min(decode, model_rate), 3
        )
    return figures


def _harmonic(first: float, second: float) -> float:
    """The rate of two stages that take turns on one resource."""
    return 1 / (1 / first + 1 / second)


def _rate(images: int, seconds: float | None) -> float | None:
    return round(images / seconds, 1) if seconds else None


def format_encode_table(r: dict[str, Any]) -> str:
    """The figures of one bench_encode result, one per line, for a person to read."""
    rows = [
        ("model / device / path", f"{r['model']} / {r['device']} {r['precision']} / {r['path']}"),
        ("JPEG decoding", f"{r['jpeg_decode']}, {r['workers']} workers, batch {r['batch_size']}"),
        ("torch.compile", _compiled(r)),
        ("(a) decode img/s", f"{r['decode_per_s']:,.1f} ({r['decode_per_core_per_s']:,.1f}/core)"),
        *_device_decode_rows(r),
        ("plain PIL->preprocess loop", f"{r['plain_pil_open_clip_loop_per_s']:,.1f} img/s, 1 core"),
        ("(b) model img/s", f"{r['model_per_s']:,.1f}"),
        ("(c) end-to-end img/s", f"{r['e2e_per_s']:,.1f} ({r['images']:,} images)"),
        ("bound", f"{r['bound_per_s']:,.1f} = {r['bound']}"),
        ("ratio e2e / bound", f"{r['ratio']:.3f}{_above_bound_note(r['ratio'])}"),
        *_separate_ratio_row(r),
        ("e2e main thread, seconds", _stages(r["e2e_stage_seconds"])),
        *_decoder_thread_row(r),
        ("peak RSS MiB", f"{r['peak_rss_mib']:,.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _above_bound_note(ratio: float) -> str:
    """e2e well above its bound: a capacity was measured low, most often because another
    process had the cores then (each is timed once, for seconds)."""
    if ratio <= 1.15:
        return ""
    return "  (above 1: a capacity measured low, e.g. the machine was busy; run it again)"


def _device_decode_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """GPU JPEG decoding alone (inside a) and while the model ran (in e2e)."""
    if not r.get("device_decode_per_s"):
        return []
    alone, during = r["device_decode_per_s"], r.get("e2e_device_decode_per_s")
    return [
        ("(d) device decode img/s", f"{alone:,.1f} (GPU decoder stage alone, inside a)"),
        ("    during e2e", f"{during:,.1f}" if during else "-"),
    ]


def _separate_ratio_row(r: dict[str, Any]) -> list[tuple[str, str]]:
    if "ratio_to_min_decode_model" not in r or r["bound"].startswith("min(decode, model)"):
        return []
    return [("ratio e2e / min(a, b)", f"{r['ratio_to_min_decode_model']:.3f}")]


def _decoder_thread_row(r: dict[str, Any]) -> list[tuple[str, str]]:
    seconds = r.get("e2e_decoder_seconds")
    return [("e2e decoder thread, seconds", _stages(seconds))] if seconds else []


def _compiled(r: dict[str, Any]) -> str:
    if not r["compile"]:
        return "no"
    said = {True: "compiled", False: "not compiled (see the log)"}
    return f"asked: model capacity {said[r['model_compiled']]}, e2e {said[r['e2e_compiled']]}"


def _stages(seconds: dict[str, float]) -> str:
    return ", ".join(f"{stage} {value:.2f}" for stage, value in seconds.items())


def _capacities(config: Any) -> dict[str, Any]:
    from meter_batch.ingest.decode import split_preprocess
    from meter_batch.ingest.encode_loop import decode_options
    from meter_batch.ingest.scan import collect_work
    from meter_batch.model.encoder import ImageEncoder, plan_device
    from meter_batch.model.loading import load_model

    loaded = load_model(config.model)
    stage = split_preprocess(loaded.reference_preprocess)
    device = plan_device(config.device, config.precision)
    work = collect_work(config.images_dir)
    options = decode_options(config, loaded, stage, device)
    decoded, decode_s, device_s = _decode_capacity(config, work, (stage, options, device))
    encoder = ImageEncoder(
        loaded.model, stage.mean, stage.std, device, config.batch_size if config.compile else None
    )
    plain = _plain_loop_rate(config.images_dir, work, loaded.reference_preprocess)
    return {
        "model": config.model.name,
        "device": str(device.device),
        "precision": device.precision,
        "path": "exact" if config.exact else "fast",
        "jpeg_decode": "device" if options.jpeg_on_device else "workers",
        "compile": config.compile,
        "workers": config.workers,
        "batch_size": config.batch_size,
        "decode_per_s": round(decoded / decode_s, 1),
        "decode_per_core_per_s": round(decoded / decode_s / max(1, config.workers), 1),
        "device_decode_per_s": _rate(decoded, device_s) if options.jpeg_on_device else None,
        "plain_pil_open_clip_loop_per_s": round(plain, 1),
        "model_per_s": round(_model_rate(encoder, stage.short_side, config.batch_size), 1),
        "model_compiled": encoder.runs_compiled,
    }


def _decode_capacity(config: Any, work: Any, how: tuple[Any, Any, Any]) -> tuple[int, float, float]:
    """Images decoded by the workers (and the GPU JPEG decoder when it is on), all the
    seconds that took, and the seconds inside the device decoder (nvjpeg + resize)."""
    from meter_batch.ingest.decode import ImageFiles
    from meter_batch.ingest.gpu_decode import DeviceJpegDecoder
    from meter_batch.ingest.workers import LoaderSettings, decoded_batches

    stage, options, device = how
    dataset = ImageFiles(os.fsencode(config.images_dir.resolve()), work, options)
    settings = LoaderSettings(config.batch_size, config.workers, device.is_cuda, 60.0)
    on_device = DeviceJpegDecoder(device.device, stage.short_side, options)
    if options.jpeg_on_device:  # nvjpeg's one-off set-up is not decode capacity
        on_device.warm_up()
    decoded, device_s = 0, 0.0
    started = time.perf_counter()
    for batch in decoded_batches(dataset, list(range(len(work))), settings):
        batch_started = time.perf_counter()
        merged, _ = on_device(batch)  # plain JPEGs decode on the GPU when it has one
        device_s += time.perf_counter() - batch_started  # its stream is synchronized
        decoded += len(merged.indices)
    if device.is_cuda:
        torch.cuda.synchronize()
    return decoded, max(time.perf_counter() - started, 1e-9), device_s


def _plain_loop_rate(root: Path, work: Any, preprocess: Any, limit: int = 150) -> float:
    """The users' loop, one core: Image.open -> open_clip preprocess (no model)."""
    from PIL import Image

    folder = os.fsencode(root.resolve())
    count = min(limit, len(work))
    started = time.perf_counter()
    for position in range(count):
        try:
            with Image.open(os.path.join(folder, work.relpath(position))) as image:
                preprocess(image)
        except Exception:  # the users' loop would have crashed here: not counted
            continue
    return count / (time.perf_counter() - started)


def _model_rate(encoder: Any, side: int, batch: int) -> float:
    """encode_image on uint8 batches already on the device (normalization included)."""
    pixels = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8)
    pixels = pixels.to(encoder.plan.device)
    cuda = encoder.plan.is_cuda
    encoder(pixels)  # warm-up (cudnn autotune, allocator)
    rounds, started = 0, time.perf_counter()
    while rounds < 3 or time.perf_counter() - started < MODEL_SECONDS[cuda]:
        encoder(pixels)
        rounds += 1
        if cuda:
            torch.cuda.synchronize()
    return batch * rounds / (time.perf_counter() - started)


def write_bench_images(folder: Path, count: int) -> None:
    """Half 640x480, half 1920x1080; 4 in 5 JPEG, 1 in 5 PNG (deterministic)."""
    import random

    from meter_batch.tools.samples import sample_image

    rng = random.Random(7)
    for number in range(count):
        sub = folder / f"{number // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        size = (640, 480) if number % 2 == 0 else (1920, 1080)
        image = sample_image(rng, size)
        if number % 5 == 4:
            image.save(sub / f"{number:06d}.png", compress_level=1)
        else:
            image.save(sub / f"{number:06d}.jpg", quality=90)
