"""Issue-6 techniques not (yet) in the pipeline, measured on a GPU before building them in.

1. Batched GPU JPEG decoding (torchvision.io.decode_jpeg on CUDA, nvjpeg) + resize and
   center crop on the GPU: images/s over the benchmark's JPEGs, and the embedding cosine
   against open_clip's reference preprocessing (PIL) on real photos and generated images.
2. torch.compile: model capacity (uint8 batches already on the device) with and without.
3. `meter-batch finetune` on CUDA: a few steps of a tiny model, and the checkpoint loads.

    python3 benchmarks/gpu_extras.py --images /tmp/gpu-bench/images --out "$OUT"
"""

from __future__ import annotations

import argparse
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from meter_batch.config import ModelSpec
from meter_batch.model.loading import load_model

DEVICE = "cuda"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def gpu_pixels(datas: list[torch.Tensor], side: int) -> torch.Tensor:
    """JPEG bytes -> (N, side, side, 3) uint8 on the GPU: decode, resize short side, crop."""
    images = torchvision.io.decode_jpeg(datas, mode=torchvision.io.ImageReadMode.RGB, device=DEVICE)
    out = torch.empty((len(images), side, side, 3), dtype=torch.uint8, device=DEVICE)
    for n, image in enumerate(images):
        _, h, w = image.shape
        scale = side / min(h, w)
        size = (max(side, round(h * scale)), max(side, round(w * scale)))
        resized = F.interpolate(
            image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False
        )
        top, left = (size[0] - side) // 2, (size[1] - side) // 2
        crop = resized[0, :, top : top + side, left : left + side]
        out[n] = crop.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    return out


def read_bytes(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def gpu_decode_rate(files: list[Path], side: int, batch: int, threads: int) -> dict[str, Any]:
    """Files read by a thread pool, decoded and resized on the GPU in batches."""
    gpu_pixels([read_bytes(files[0])], side)  # nvjpeg handle set-up, not timed
    _sync()
    started = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        chunks = [files[i : i + batch] for i in range(0, len(files), batch)]
        for chunk_bytes in pool.map(lambda c: [read_bytes(p) for p in c], chunks):
            pixels = gpu_pixels(chunk_bytes, side)
            done += pixels.shape[0]
        _sync()
    seconds = time.perf_counter() - started
    return {"files": done, "seconds": round(seconds, 2), "per_s": round(done / seconds, 1)}


def fidelity(model_name: str, files: list[Path]) -> dict[str, Any]:
    """Cosine between embeddings of GPU-decoded pixels and open_clip's preprocess."""
    loaded = load_model(ModelSpec(model_name, "none"))
    model = loaded.model.to(DEVICE).eval()
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"], device=DEVICE).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=DEVICE).view(1, 3, 1, 1)
    side = int(cfg["size"][0] if isinstance(cfg["size"], (list, tuple)) else cfg["size"])
    cosines = []
    with torch.inference_mode():
        for path in files:
            reference = loaded.reference_preprocess(Image.open(path))[None].to(DEVICE)
            pixels = gpu_pixels([read_bytes(path)], side).permute(0, 3, 1, 2).float() / 255
            a = F.normalize(model.encode_image(reference), dim=-1)
            b = F.normalize(model.encode_image((pixels - mean) / std), dim=-1)
            cosines.append(float((a * b).sum()))
    values = np.asarray(cosines)
    return {
        "model": model_name,
        "files": len(files),
        "mean_cosine": round(float(values.mean()), 5),
        "min_cosine": round(float(values.min()), 5),
    }


def real_photos(folder: Path) -> list[Path]:
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        scale = max(2.5, 900 / min(image.size))
        large = image.resize((int(image.width * scale), int(image.height * scale)), Image.BICUBIC)
        for quality, flip in ((92, False), (85, True)):
            target = folder / f"{name}-{quality}.jpg"
            shown = large.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else large
            buffer = io.BytesIO()
            shown.save(buffer, "JPEG", quality=quality)
            target.write_bytes(buffer.getvalue())
            written.append(target)
    return written


def model_capacity(model_name: str, compiled: bool, batch: int, steps: int) -> dict[str, Any]:
    loaded = load_model(ModelSpec(model_name, "none"))
    model = loaded.model.to(DEVICE).eval().to(memory_format=torch.channels_last)
    encode = torch.compile(model.encode_image) if compiled else model.encode_image
    x = torch.randint(0, 255, (batch, 3, 224, 224), dtype=torch.uint8, device=DEVICE)
    started = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        encode(x.float().contiguous(memory_format=torch.channels_last) / 255)
        _sync()
        warm = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(steps):
            encode(x.float().contiguous(memory_format=torch.channels_last) / 255)
        _sync()
    seconds = time.perf_counter() - started
    return {
        "model": model_name,
        "compiled": compiled,
        "batch": batch,
        "first_call_s": round(warm, 1),
        "per_s": round(batch * steps / seconds, 1),
    }


def caption_table(folder: Path, rows: int) -> Path:
    colours = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["filepath,title"]
    for number in range(rows):
        name = list(colours)[number % 3]
        Image.new("RGB", (96, 80), colours[name]).save(folder / "img" / f"{number}.png")
        lines.append(f"img/{number}.png,a {name} square")
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    return folder / "captions.csv"


def finetune_on_cuda(work: Path) -> dict[str, Any]:
    from meter_batch.tools.finetune import FinetuneOptions, finetune

    table = caption_table(work / "captions", 96)
    config = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "layers": 2},
    }
    config_path = work / "gpu-tiny.json"
    config_path.write_text(json.dumps(config))
    started = time.perf_counter()
    result = finetune(
        FinetuneOptions(
            train_csv=table,
            out_dir=work / "ft",
            model=str(config_path),
            epochs=2,
            batch_size=32,
            warmup=5,
            device=DEVICE,
            workers=4,
        )
    )
    before = load_model(ModelSpec(str(config_path), "none")).model.state_dict()
    after = load_model(ModelSpec(str(result.config), str(result.weights))).model.state_dict()
    changed = sum(not torch.equal(before[k], after[k]) for k in before)
    return {
        "device": result.device,
        "rows": result.rows,
        "seconds": round(time.perf_counter() - started, 1),
        "tensors_changed": changed,
        "tensors": len(before),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-extras"))
    parser.add_argument("--device", default="cuda", help="cpu: a quick check of this script")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    results: dict[str, Any] = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    steps = [
        ("finetune_cuda", lambda: finetune_on_cuda(args.work)),
        ("gpu_decode", lambda: _decode_rows(args.images)),
        ("fidelity", lambda: _fidelity_rows(args.images, args.work)),
        ("compile", _compile_rows),
    ]
    if DEVICE != "cuda":
        steps = steps[:3]
    for name, step in steps:
        try:
            results[name] = step()
        except Exception as exc:  # one technique failing must not lose the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({name: results[name]}), flush=True)
        (args.out / "gpu-extras.json").write_text(json.dumps(results, indent=2))


def _decode_rows(images: Path) -> list[dict[str, Any]]:
    rows = []
    for size in sorted(p.name for p in images.iterdir()):
        files = sorted((images / size).rglob("*.jpg"))
        for batch, threads in ((128, 8), (256, 16)):
            row = {"size": size, "batch": batch, "threads": threads}
            rows.append({**row, **gpu_decode_rate(files, 224, batch, threads)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _fidelity_rows(images: Path, work: Path) -> list[dict[str, Any]]:
    photos = real_photos(work / "photos")
    generated = sorted(images.rglob("*.jpg"))[::200][:50]
    return [
        {"set": "skimage photos", **fidelity("RN50", photos)},
        {"set": "skimage photos", **fidelity("ViT-B-32", photos)},
        {"set": "generated", **fidelity("ViT-B-32", generated)},
    ]


def _compile_rows() -> list[dict[str, Any]]:
    rows = []
    for model in ("ViT-B-32", "RN50"):
        for compiled in (False, True):
            rows.append(model_capacity(model, compiled, 512, 30))
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
