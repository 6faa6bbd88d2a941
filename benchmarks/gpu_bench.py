"""Issue-6 GPU benchmark: generate >= 5,000 JPEGs of each size, run `bench encode` for
RN50 and ViT-B-32 (fast path; JPEGs decoded on the GPU and by the workers), write the
results to OUT/bench-gpu.json.

    python3 benchmarks/gpu_bench.py --per-size 5000 --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from meter_batch.bench import bench_encode
from meter_batch.config import ModelSpec
from meter_batch.samples import sample_image


def _shard(args: tuple[str, int, int, int, int]) -> int:
    folder, start, count, width, height = args
    rng = random.Random(start)
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for number in range(start, start + count):
        sample_image(rng, (width, height)).save(target / f"{number:06d}.jpg", quality=90)
    return count


def generate(root: Path, per_size: int) -> float:
    started = time.monotonic()
    jobs = []
    for width, height in ((640, 480), (1920, 1080)):
        for shard in range(32):
            count = per_size // 32 + (1 if shard < per_size % 32 else 0)
            start = shard * 100_000 + (0 if width == 640 else 50_000)
            jobs.append(
                (str(root / f"{width}x{height}" / f"{shard:02d}"), start, count, width, height)
            )
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        total = sum(pool.map(_shard, jobs))
    return total / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-size", type=int, default=5000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-bench"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--sweep", action="store_true", help="batch sizes and worker counts instead (fast path)"
    )
    parser.add_argument("--only", type=int, help="run only the first N configurations")
    args = parser.parse_args()
    images = args.work / "images"
    rate = generate(images, args.per_size)
    results: list[dict] = [
        {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "generated_per_s": round(rate, 1),
            "images": 2 * args.per_size,
        }
    ]
    print(json.dumps(results[0]), flush=True)
    cores = min(os.cpu_count() or 1, 16)
    plan = [(m, False, cores, 256, "auto") for m in ("RN50", "ViT-B-32")]  # GPU JPEG decoding
    plan += [("ViT-B-32", False, cores, 512, "auto"), ("RN50", False, cores, 256, "workers")]
    if args.sweep:
        plan = [
            ("ViT-B-32", False, cores - 1, 256, "workers"),
            ("ViT-B-32", False, cores, 512, "workers"),
        ]
    for model, exact, workers, batch, jpeg_decode in plan[: args.only]:
        spec = ModelSpec(model, "none")
        result = bench_encode(
            images, args.work, spec, 0, workers, batch, args.device, exact, jpeg_decode
        )
        print(json.dumps(result), flush=True)
        results.append(result)
        name = "bench-gpu-sweep.json" if args.sweep else "bench-gpu.json"
        (args.out / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
