"""GPU check of `encode`: CUDA-vs-CPU fidelity and end-to-end throughput on generated JPEGs.

Run on a CUDA machine from the repository root:
    python3 benchmarks/gpu_encode_check.py --images 5000 --out /tmp/gpu-check
Prints a JSON line per measurement and writes them all to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.ingest.encode_run import encode
from meter_batch.store.commit import open_store
from meter_batch.tools.samples import write_sample_images

RESULTS: list[dict] = []


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)
    RESULTS.append(fields)


def _write_shard(args: tuple[str, int, int]) -> int:
    folder, count, seed = args
    return write_sample_images(Path(folder), count, seed=seed, broken=False)


def generate(folder: Path, count: int) -> float:
    started = time.monotonic()
    shards = max(1, min(os.cpu_count() or 1, 32))
    per = -(-count // shards)
    jobs = [(str(folder / f"shard-{i:02d}"), per, 1000 + i) for i in range(shards)]
    with ProcessPoolExecutor(shards) as pool:
        written = sum(pool.map(_write_shard, jobs))
    return written / (time.monotonic() - started)


def stored_embeddings(store: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    rows: dict[str, np.ndarray] = {}
    for part in open_store(store).live_paths("embeddings"):
        table = pq.read_table(part, columns=["path", "embedding"])
        dim = table.schema.field("embedding").type.list_size
        flat = table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
        for path, vec in zip(table.column("path").to_pylist(), flat.reshape(-1, dim), strict=True):
            rows[path] = vec.astype(np.float32)
    return rows


def run_encode(
    images: Path, store: Path, model: str, device: str, precision: str, batch: int, workers: int
) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    config = EncodeConfig(
        images_dir=images,
        store=store,
        model=ModelSpec(model, "none"),
        batch_size=batch,
        workers=workers,
        device=device,
        precision=precision,
    )
    summary = encode(config, interactive=False)
    return summary.to_json()


def fidelity(images: Path, work: Path, model: str) -> None:
    cpu = run_encode(images, work / "cpu", model, "cpu", "fp32", 32, 8)
    ref = stored_embeddings(work / "cpu")
    for precision in ("fp32", "bf16", "fp16"):
        run_encode(images, work / precision, model, "cuda", precision, 32, 8)
        got = stored_embeddings(work / precision)
        cos = np.array(
            [float(ref[p] @ got[p] / np.linalg.norm(ref[p]) / np.linalg.norm(got[p])) for p in ref]
        )
        report(
            check="fidelity_vs_cpu_fp32",
            model=model,
            precision=precision,
            images=len(ref),
            cpu_encoded=cpu["encoded"],
            mean_cos=round(float(cos.mean()), 6),
            min_cos=round(float(cos.min()), 6),
        )


def model_capacity(model_name: str, batch: int) -> float:
    from meter_batch.model.encoder import ImageEncoder, plan_device
    from meter_batch.model.loading import load_model

    loaded = load_model(ModelSpec(model_name, "none"))
    stage_mean, stage_std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    encoder = ImageEncoder(loaded.model, stage_mean, stage_std, plan_device("cuda", "bf16"))
    pixels = torch.randint(0, 255, (batch, 224, 224, 3), dtype=torch.uint8).cuda()
    for _ in range(3):
        encoder(pixels)
    torch.cuda.synchronize()
    started, rounds = time.monotonic(), 20
    for _ in range(rounds):
        encoder(pixels)
    torch.cuda.synchronize()
    return batch * rounds / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-check"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-work"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report(
        check="machine",
        gpu=torch.cuda.get_device_name(0),
        cores=os.cpu_count(),
        torch=torch.__version__,
        python=platform.python_version(),
    )
    small = args.work / "small"
    rate = generate(small, 256)
    report(check="generate", images=256, per_s=round(rate, 1))
    for model in ("RN50", "ViT-B-32"):
        fidelity(small, args.work / f"fid-{model}", model)
    big = args.work / "big"
    rate = generate(big, args.images)
    report(check="generate", images=args.images, per_s=round(rate, 1))
    workers = min(os.cpu_count() or 1, 16)
    for model in ("RN50", "ViT-B-32"):
        report(
            check="model_capacity_bf16",
            model=model,
            batch=512,
            images_per_s=round(model_capacity(model, 512), 1),
        )
        for batch in (256, 512):
            summary = run_encode(big, args.work / "store", model, "cuda", "bf16", batch, workers)
            report(check="encode_e2e", model=model, batch=batch, workers=workers, **summary)
    (args.out / "results.json").write_text(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    main()
