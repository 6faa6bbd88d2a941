"""Issue-6 GPU benchmark: generate >= 5,000 JPEGs of each size, time the GPU decoder's
cropped resize against the whole-frame one, run `bench encode` for RN50 and ViT-B-32 (fast
path; JPEGs decoded on the GPU, also with --compile, and by the workers), check
GPU-decoded embeddings against the reference path, write the results to
OUT/bench-gpu.json. `--variants` A/Bs experiments end to end instead.

    python3 benchmarks/gpu_bench.py --per-size 5000 --out "$OUT"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from meter_batch.config import BenchEncodeSettings, EncodeConfig, ModelSpec
from meter_batch.ingest.encode_run import encode
from meter_batch.store.catalog import run_query
from meter_batch.tools.bench.encode import run as bench_encode
from meter_batch.tools.bench.encode import table as format_encode_table
from meter_batch.tools.samples import sample_image


def _shard(args: tuple[str, int, int, int, int]) -> int:
    """Files ``start..start+count`` of one size. Drawing a 1920x1080 picture costs ~10x its
    JPEG encoding, so a fresh picture is drawn every 25 files and the files between get a
    random patch each: every file differs, and generating 10,000 takes seconds, not a
    minute of device time."""
    folder, start, count, width, height = args
    rng = random.Random(start)
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for offset, number in enumerate(range(start, start + count)):
        if offset % 25 == 0:
            base = sample_image(rng, (width, height))
        image = base.copy()
        x, y = rng.randrange(width - 40), rng.randrange(height - 40)
        colour = tuple(rng.randrange(256) for _ in range(3))
        image.paste(colour, (x, y, x + rng.randint(8, 40), y + rng.randint(8, 40)))
        image.save(target / f"{number:06d}.jpg", quality=90)
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


def consistency(images: Path, work: Path, model: str, device: str) -> dict:
    """GPU-decoded embeddings against the reference path, file by file, over many
    batches: a stream race (decoder and model on different CUDA streams) would show as
    files whose pixels were overwritten, i.e. low cosines."""
    stores = {}
    for name, exact, jpeg_decode in (("device", False, "device"), ("reference", True, "workers")):
        stores[name] = work / f"check-{name}"
        shutil.rmtree(stores[name], ignore_errors=True)
        config = EncodeConfig(
            images_dir=images,
            store=stores[name],
            model=ModelSpec(model, "none"),
            batch_size=256,
            workers=min(os.cpu_count() or 1, 16),
            device=device,
            precision="fp32",
            exact=exact,
            jpeg_decode=jpeg_decode,
        )
        encode(config, interactive=False)
    ours, reference = _vectors(stores["device"]), _vectors(stores["reference"])
    cosines = np.array(  # stored float16 rows are not quite of unit length
        [ours[p] @ reference[p] / np.linalg.norm(ours[p]) / np.linalg.norm(reference[p])
         for p in reference]
    )  # fmt: skip
    return {
        "check": "gpu_decode_vs_reference",
        "model": model,
        "images": len(reference),
        "same_paths": sorted(ours) == sorted(reference),
        "mean_cos": round(float(cosines.mean()), 6),
        "min_cos": round(float(cosines.min()), 6),
        "below_0.99": int((cosines < 0.99).sum()),
    }


def _vectors(store: Path) -> dict[str, np.ndarray]:
    rows = run_query(store, "SELECT path, embedding FROM images").to_pylist()
    return {r["path"]: np.asarray(r["embedding"], dtype=np.float64) for r in rows}


@contextmanager
def variant(name: str) -> Iterator[None]:
    """Experiments, patched in for one configuration. "whole-resize": the GPU decoder
    resizes whole frames, then crops (as before the cropped resize), to measure what the
    cropped resize gives end to end on the same machine. (Earlier variants, measured and
    not kept: the decoder's stream at the highest priority, the resize in float16.)"""
    from meter_batch.ingest import gpu_decode

    cls = gpu_decode.DeviceJpegDecoder
    saved = cls.resize_crop
    if name == "whole-resize":
        cls.resize_crop = _whole_resize_crop  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.resize_crop = saved  # type: ignore[method-assign]


def _whole_resize_crop(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return _resize_whole_frame(images, self.side)


def _resize_whole_frame(frames: torch.Tensor, side: int) -> torch.Tensor:
    """torchvision's resize of the short side, then its center crop: the reference."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    resized = TF.resize(frames.float(), [side], InterpolationMode.BICUBIC, antialias=True)
    crop = TF.center_crop(resized, [side, side]).round_().clamp_(0, 255)
    return crop.to(torch.uint8).permute(0, 2, 3, 1)


def run_variants(images: Path, args: argparse.Namespace, results: list[dict]) -> None:
    cores = min(os.cpu_count() or 1, 16)
    plan = [
        ("RN50", 256, "base"),
        ("RN50", 256, "whole-resize"),
        ("ViT-B-32", 256, "base"),
        ("ViT-B-32", 256, "whole-resize"),
    ]
    for model, batch, name in plan:
        with variant(name):
            result = bench_encode(
                BenchEncodeSettings(
                    images=images,
                    dir=args.work,
                    model=ModelSpec(model, "none"),
                    workers=cores,
                    batch_size=batch,
                    device=args.device,
                )
            )
        result["variant"] = name
        print(json.dumps(result), flush=True)
        print(format_encode_table(result), flush=True)
        results.append(result)
        (args.out / "bench-gpu-variants.json").write_text(json.dumps(results, indent=2))


def resize_timings(device: str, rounds: int = 5) -> dict:
    """The GPU decoder's resize + crop (only the input the crop keeps) against torchvision's
    resize of the whole frame then center crop, on GROUP frames of each size on ``device``:
    ms per call and how far apart the pixels are."""
    from meter_batch.ingest import gpu_decode
    from meter_batch.ingest.decode import DecodeOptions

    target = torch.device(device)
    decoder = gpu_decode.DeviceJpegDecoder(target, 224, DecodeOptions(None, 10**8))

    def whole(frames: torch.Tensor) -> torch.Tensor:
        return _resize_whole_frame(frames, 224)

    result: dict = {"check": "resize_crop_vs_whole_frame", "device": device}
    for height, width in ((1080, 1920), (480, 640)):
        frames = torch.randint(0, 256, (gpu_decode.GROUP, 3, height, width), dtype=torch.uint8)
        frames = frames.to(target)
        for name, action in (("whole", whole), ("cropped", decoder.resize_crop)):
            result[f"{width}x{height}_{name}_ms"] = round(_timed(action, frames, rounds), 2)
        difference = (whole(frames).int() - decoder.resize_crop(frames).int()).abs()
        result[f"{width}x{height}_max_diff"] = int(difference.max())
    worst = 0  # near 1:1 and short sides under 224: where a CPU run found 255-level errors
    for height, width in ((221, 300), (300, 221), (243, 3845), (238, 3458), (300, 1000)):
        frames = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8).to(target)
        difference = (whole(frames).int() - decoder.resize_crop(frames).int()).abs()
        worst = max(worst, int(difference.max()))
    result["odd_geometries_max_diff"] = worst
    return result


def _timed(action, frames: torch.Tensor, rounds: int) -> float:  # type: ignore[no-untyped-def]
    action(frames)  # warm-up
    if frames.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(rounds):
        action(frames)
    if frames.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / rounds * 1000


def source_digest() -> str:
    """SHA-256 over meter_batch/*.py and this script, by path: compare with
    `python3 benchmarks/gpu_bench.py --digest` on a checkout to know which commit ran."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("meter_batch/*.py"), Path(__file__).resolve()]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-size", type=int, default=5000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-bench"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--sweep", action="store_true", help="batch sizes and worker counts instead (fast path)"
    )
    parser.add_argument("--start", type=int, default=0, help="skip the first N configurations")
    parser.add_argument("--only", type=int, help="then run only N configurations")
    parser.add_argument("--variants", action="store_true", help="GPU-decode experiments instead")
    parser.add_argument("--digest", action="store_true", help="print source_sha256 and stop")
    parser.add_argument("--resize", action="store_true", help="print resize_timings and stop")
    args = parser.parse_args()
    if args.digest:
        print(source_digest())
        return
    if args.resize:
        print(json.dumps(resize_timings(args.device)))
        return
    if args.out is None:
        parser.error("--out is required")
    images = args.work / "images"
    results = [machine(generate(images, args.per_size), 2 * args.per_size)]
    print(json.dumps(results[0]), flush=True)
    results.append(resize_timings(args.device))
    print(json.dumps(results[-1]), flush=True)
    if args.variants:
        run_variants(images, args, results)
    else:
        run_plan(images, args, results)


def machine(generated_per_s: float, images: int) -> dict:
    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "generated_per_s": round(generated_per_s, 1),
        "images": images,
        "source_sha256": source_digest(),  # which code ran, even from an uncommitted tree
    }


def _selected(plan: list, start: int, count: int | None) -> list:
    return plan[start:] if count is None else plan[start : start + count]


def run_plan(images: Path, args: argparse.Namespace, results: list[dict]) -> None:
    cores = min(os.cpu_count() or 1, 16)
    plan = [(m, cores, 256, "auto", False) for m in ("RN50", "ViT-B-32", "ViT-B-32")]
    plan += [("check", cores, 256, "auto", False)]
    plan += [(m, cores, 256, "auto", True) for m in ("RN50", "ViT-B-32")]  # --compile
    plan += [(m, cores, 256, "workers", False) for m in ("ViT-B-32", "RN50")]
    if args.sweep:
        plan = [
            ("ViT-B-32", cores - 1, 256, "workers", False),
            ("ViT-B-32", cores, 512, "workers", False),
        ]
    name = "bench-gpu-sweep.json" if args.sweep else "bench-gpu.json"
    for model, workers, batch, jpeg_decode, compile_it in _selected(plan, args.start, args.only):
        if model == "check":  # every 640x480 file, and one folder of the large ones
            found = [
                consistency(folder, args.work, "ViT-B-32", args.device)
                for folder in (images / "640x480", images / "1920x1080" / "00")
            ]
        else:
            settings = BenchEncodeSettings(
                images=images,
                dir=args.work,
                model=ModelSpec(model, "none"),
                workers=workers,
                batch_size=batch,
                device=args.device,
                jpeg_decode=jpeg_decode,
                compile=compile_it,
            )
            found = [bench_encode(settings)]
            print(format_encode_table(found[0]), flush=True)
        for result in found:
            print(json.dumps(result), flush=True)
        results.extend(found)
        (args.out / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
