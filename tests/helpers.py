"""What the tests share: tiny model configs, images made on the fly, one way to encode, and
reading a store back the way an outside reader would (only what the manifest lists)."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import multiprocessing
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from meter_batch import faults
from meter_batch.cli import main
from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.ingest.encode_run import RunSummary, encode
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from meter_batch.store.index import index_ids, load_index
from meter_batch.store.layout import LiveKind
from meter_batch.store.verify import verify
from meter_batch.tools.samples import sample_image

REPO = Path(__file__).resolve().parents[1]
# A store written by 717bb43 (before the restructure): see tests/store/test_compatibility.py
OLD_STORE = Path(__file__).resolve().parent / "data" / "store-717bb43"

# --- tiny open_clip models -------------------------------------------------------------

TEXT_CFG: dict[str, Any] = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 32,
    "heads": 2,
    "layers": 1,
}

TINY_VIT: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": TEXT_CFG,
}
TINY_RESNET: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": TEXT_CFG,
}


def write_config(folder: Path, name: str, config: dict[str, Any]) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def reference_embeddings(config: Path, checkpoint: Path, paths: list[Path]) -> torch.Tensor:
    """The users' per-image loop, verbatim: open_clip preprocess + encode_image + normalize."""
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(
        config.stem, pretrained=str(checkpoint)
    )
    model.eval()
    rows = []
    with torch.no_grad():
        for path in paths:
            image = preprocess(Image.open(path)).unsqueeze(0)
            features = model.encode_image(image)
            rows.append(features / features.norm(dim=-1, keepdim=True))
    return torch.cat(rows)


# --- images ----------------------------------------------------------------------------


def make_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` varied images (sizes, JPEG/PNG, RGB/L/opaque RGBA); relative paths returned.

    Only modes whose pixels open_clip's reference loop already gets right: the odd ones
    (transparency, palettes, 16-bit, CMYK, EXIF rotation) are tests/ingest/test_odd_files.py's.
    """
    rng = random.Random(seed)
    sizes = [(97, 61), (64, 64), (300, 200), (45, 120), (640, 480), (33, 33)]
    written = []
    for number in range(count):
        image = sample_image(rng, sizes[number % len(sizes)])
        mode = ["RGB", "RGB", "L", "RGBA", "RGB"][number % 5]
        image = image.convert(mode)
        suffix = ".jpg" if mode in ("RGB", "L") and number % 2 == 0 else ".png"
        relative = f"sub{number % 3}/img-{number:03d}{suffix}"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / relative)
        written.append(relative)
    return written


def arrow_picture(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Asymmetric: rotating it changes it, so orientation mistakes show."""
    image = Image.new("RGB", size, (20, 40, 160))
    pixels = image.load()
    assert pixels is not None
    for x in range(size[0]):
        for y in range(size[1] // 3):
            if x < size[0] * 2 // 3:
                pixels[x, y] = (230, 200, 30)
    return image


# --- label sets ------------------------------------------------------------------------

PROMPTS = {
    "digital": "デジタルメーター(7セグ)",
    "rotary": "回転式メーター",
    "analog": "アナログメーター丸型",
}


def labels_toml(
    folder: Path, name: str = "meter-type", extra: str = "", file: str = "", **prompts: str
) -> Path:
    prompts = prompts or PROMPTS
    body = f'name = "{name}"\ntop_k = {len(prompts)}\n{extra}\n'
    for label_id, prompt in prompts.items():
        body += f"[[labels]]\nid = {label_id!r}\nprompts = [{prompt!r}]\n"
    path = folder / f"{file or name}.toml"
    path.write_text(body, encoding="utf-8")
    return path


# --- encoding --------------------------------------------------------------------------


def encode_config(
    images: Path, store: Path, model: Path | str, pretrained: str = "none", **settings: Any
) -> EncodeConfig:
    """An encode of ``images`` into ``store`` with ``model`` (a JSON config or a name).

    Only what is passed is set: ``workers`` left out is the CPU-count default."""
    spec = ModelSpec(name=str(model), pretrained=pretrained)
    return EncodeConfig(images_dir=images, store=store, model=spec, **settings)


def encode_images(
    images: Path, store: Path, model: Path | str, pretrained: str = "none", **settings: Any
) -> RunSummary:
    """:func:`encode_config`, run without a progress bar."""
    return encode(encode_config(images, store, model, pretrained, **settings), interactive=False)


def encode_args(images: Path, store: Path, config: Path, pretrained: str = "none") -> list[str]:
    """The same encode as command-line arguments, decoding in the main process."""
    return ["encode", str(images), "--store", str(store), "--model", str(config),
            "--pretrained", pretrained, "--workers", "0"]  # fmt: skip


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr: exactly one line, the error."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("meter-batch: error: ")
    return err[0]


# --- reading a store back --------------------------------------------------------------


def read_parts(store_root: Path, kind: LiveKind) -> pa.Table:
    store = open_store(store_root)
    tables = [pq.read_table(path) for path in store.live_paths(kind)]
    return pa.concat_tables(tables) if tables else pa.table({})


def embeddings_of(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


def stored_vectors(store: Path) -> dict[str, np.ndarray]:
    """Each live image's embedding by path, as the catalog returns it, in float64."""
    rows = run_query(store, "SELECT path, embedding FROM images").to_pylist()
    return {r["path"]: np.asarray(r["embedding"], dtype=np.float64) for r in rows}


def live(store: Path) -> dict[str, dict[str, Any]]:
    """The catalog's live rows by path; a path live twice fails the test."""
    rows = run_query(store, "SELECT image_id, path, embedding FROM images").to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path is live twice"
    return {r["path"]: r for r in rows}


def assert_consistent(store: Path) -> None:
    """verify finds nothing, and the FAISS index holds exactly the live ids."""
    problems = verify(store).problems
    assert problems == []
    s = open_store(store)
    indexed = set(index_ids(load_index(s.path(s.manifest.index or ""))).tolist())
    assert indexed == {r["image_id"] for r in live(store).values()}


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every path below ``folder`` with its size, mtime and inode: equal means untouched."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
    }


# --- a disk that really fills up ------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``16m``) mounted at ``folder``; the test is skipped where
    mounting is not allowed (not root, or no CAP_SYS_ADMIN)."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill ``folder``'s file system until only ``leave`` bytes are free; the filler file
    is returned (unlink it to make room again)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


# --- a real browser (the report's tests) -------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
# as the machine's notes advise: no background connections (the network is closed)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
ALL_CHARTS_DRAWN = (
    "document.querySelectorAll('[data-spec]').length === "
    "document.querySelectorAll('[data-drawn=true]').length"
)


def browser_missing() -> str | None:
    """Why no headless Chromium can run here, or None when it can."""
    if shutil.which(str(CHROMIUM)) is None:
        return f"no {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def section_screenshots(browser: Any, index: Path, folder: Path) -> list[Path]:
    """A screenshot of each section of a report, once every chart is drawn; each one
    checked to hold a picture (more than 50 colours), and every <img> loaded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(index.resolve().as_uri())
    page.wait_for_function(ALL_CHARTS_DRAWN)
    loaded = "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    assert page.evaluate(loaded)
    shots = []
    sections = page.locator("section.section")
    for n in range(sections.count()):
        shot = folder / f"section-{n}.png"
        sections.nth(n).screenshot(path=str(shot))
        with Image.open(shot) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50, shot  # not blank
        shots.append(shot)
    page.close()
    return shots


# --- serve ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str
    store: Path
    images: Path
    relpaths: list[str]
    ids: dict[str, int]  # path -> image_id

    def get(self, path: str, **params: str | int) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=30)


# --- runs in a child process, without the imports -------------------------------------


# Each run is forked from a fork server: a fresh interpreter that imported the CLI once,
# and runs nothing else. Forked from the test process itself, after a few hundred tests
# had left threads and library state behind, a child now and then hung for good
# (every thread in a futex wait, in open_clip's config registry), holding the store's lock.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["meter_batch.cli", "tests.helpers"])


class ForkedRun:
    """`meter-batch ARGS` in a child of the fork server, with ``env`` added: the same run
    as a fresh interpreter's, killed the same way, without its 3-6 s of imports each time
    (23 of them made the SIGKILL sweep 145 s). ``stderr``: a file for what it prints.
    Only for runs without decode workers: a child of the fork server would start its
    workers from the fork server too, not as its own children, unlike a real run."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        stderr: Path | None = None,
    ) -> None:
        target, what = _run_forked, (args, env, stderr)
        self.process = _FORKS.Process(target=target, args=what, daemon=True)
        self.process.start()

    def send_signal(self, number: int) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, number)

    def wait(self, timeout: float) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode


def _run_forked(args: list[str], env: dict[str, str], stderr: Path | None) -> None:
    if stderr is not None:  # what the run says, for the test to read
        os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    torch.set_num_threads(1)  # the run as the CLI's, on a share of the 2 cores
    os.environ.update(env)
    faulthandler.dump_traceback_later(60)  # a hang shows every thread's stack (stderr)
    faults._seen.clear()  # count this run's crash points from zero
    os._exit(main(["-q", *args]))
