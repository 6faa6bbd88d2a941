"""Sample images for the demo and the benchmarks: deterministic, varied, a few broken."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

_SIZES = ((640, 480), (480, 640), (800, 600), (320, 240), (1024, 768), (200, 150))


def sample_image(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Coloured shapes on a gradient: enough structure to give distinct embeddings."""
    width, height = size
    base = tuple(rng.randrange(256) for _ in range(3))
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image = Image.blend(image, Image.new("RGB", size, base), 0.6)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randint(10, width // 2), y0 + rng.randint(10, height // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def write_sample_images(folder: Path, count: int, seed: int = 0, broken: bool = True) -> int:
    """Write ``count`` images (JPEG and PNG, in sub-folders), plus two broken files.

    Returns the number of files written. Existing files with the same names are replaced.
    """
    rng = random.Random(seed)
    for number in range(count):
        sub = folder / f"batch-{number // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        image = sample_image(rng, rng.choice(_SIZES))
        if number % 5 == 4:
            image.save(sub / f"sample-{number:05d}.png")
        else:
            image.save(sub / f"sample-{number:05d}.jpg", quality=rng.randint(70, 95))
    if not broken:
        return count
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "not-an-image.jpg").write_text("<html>404 Not Found</html>\n")
    good = folder / "batch-000" / "sample-00000.jpg"
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return count + 2
