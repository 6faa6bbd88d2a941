"""Fine-tune (or train from scratch) a CLIP model with open_clip's own trainer.

This is a thin wrapper over ``open_clip_train`` (the ``training`` extra): it checks the
caption table, resolves the starting weights to a local file (nothing is downloaded),
runs the trainer in a child process, and turns its last checkpoint into a
``.safetensors`` file plus the model config, i.e. exactly what ``encode --model
CONFIG --pretrained WEIGHTS`` takes. The training loop, loss and schedule are open_clip's.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from meter_batch.config import FinetuneOptions
from meter_batch.errors import ConfigError, InputError, ModelError
from meter_batch.model.loading import (
    read_state_dict,
    resolve_architecture,
    resolve_weights,
)

log = logging.getLogger(__name__)

IMAGE_COLUMN = "filepath"  # open_clip_train's default column names
CAPTION_COLUMN = "title"


def _make_out_dir(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; give a folder for the trained model")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {folder}: cannot create it ({exc.strerror or exc})") from exc


@dataclass(frozen=True)
class FinetuneResult:
    weights: Path  # model.safetensors
    config: Path  # the model config JSON that goes with it
    rows: int  # (image, caption) pairs trained on per epoch
    device: str


def finetune(options: FinetuneOptions) -> FinetuneResult:
    """Train, then write ``out_dir/model.safetensors`` and ``out_dir/<architecture>.json``."""
    _check_trainer_installed()
    architecture, config = resolve_architecture(options.model)
    weights = resolve_weights(architecture, options.pretrained)
    _check_default_preprocessing(weights.preprocess_overrides, options.pretrained)
    if weights.quick_gelu:  # a tag trained with QuickGELU (openai): trainer and encode keep it
        config = {**config, "quick_gelu": True}
    device = _pick_device(options.device)
    _make_out_dir(options.out_dir)
    with tempfile.TemporaryDirectory(prefix="meter-batch-train-", dir=options.out_dir) as work:
        table = Path(work) / "train.tsv"
        rows = write_training_table(options, table)
        if rows < options.batch_size:
            raise InputError(
                f"{options.train_csv} has {rows} usable rows, fewer than one batch "
                f"({options.batch_size}); lower --batch-size or add data"
            )
        # Named after the architecture: the trainer's process registers it under that name.
        trainer_config = Path(work) / f"{architecture}.json"
        trainer_config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        argv = trainer_arguments(
            options, Path(work) / "train.tsv", Path(work), device, weights.path
        )
        _run_trainer(trainer_config, argv)
        checkpoint = _last_checkpoint(Path(work) / "run" / "checkpoints")
        weights_path = options.out_dir / "model.safetensors"
        export_safetensors(checkpoint, weights_path, options.half)
        config_path = options.out_dir / trainer_config.name
        os.replace(trainer_config, config_path)  # written only once training succeeded
    return FinetuneResult(weights_path, config_path, rows, device)


def _check_default_preprocessing(overrides: tuple[tuple[str, Any], ...], tag: str) -> None:
    """A tag with its own mean / std / resize (SigLIP, DFN, some LAION) would be trained and
    then encoded with open_clip's defaults: refuse it rather than train it wrong."""
    defaults = {
        "mean": tuple(OPENAI_DATASET_MEAN),
        "std": tuple(OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    differing = [k for k, v in overrides if (tuple(v) if isinstance(v, list) else v) != defaults[k]]
    if differing:
        raise ConfigError(
            f"--pretrained {tag} uses its own preprocessing ({', '.join(differing)}), which "
            f"finetune does not carry over yet; start from a checkpoint file of a model "
            f"with open_clip's default preprocessing"
        )


def _check_trainer_installed() -> None:
    try:
        import open_clip_train.main  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"open_clip's trainer is not installed ({exc}); "
            "install it with: pip install 'meter_batch[training]'"
        ) from exc


def _pick_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def write_training_table(options: FinetuneOptions, out: Path) -> int:
    """Copy the caption table as open_clip's CSV reader wants it: TSV, absolute paths.

    Relative image paths are taken relative to the table's folder. A missing image or an
    empty caption is a clear error before training starts, not a crash an hour in.
    """
    rows = list(_read_caption_rows(options))
    base = options.train_csv.parent
    missing: list[str] = []
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow([IMAGE_COLUMN, CAPTION_COLUMN])
        for path_text, caption in rows:
            path = (base / path_text).resolve()
            if not _readable_image(path):
                missing.append(path_text)
                continue
            writer.writerow([str(path), " ".join(caption.split())])
    if missing:
        shown = ", ".join(missing[:3])
        raise InputError(
            f"{len(missing)} image(s) in {options.train_csv} missing or not readable as "
            f"images: {shown}"
        )
    return len(rows)


def _readable_image(path: Path) -> bool:
    """The file exists and Pillow knows its format (the header only: fast)."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _read_caption_rows(options: FinetuneOptions) -> list[tuple[str, str]]:
    try:  # utf-8-sig: a table saved by Excel starts with a byte-order mark
        text = options.train_csv.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read caption table {options.train_csv}: {exc}") from exc
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first_line else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = (options.image_column, options.caption_column)
    if not reader.fieldnames or any(c not in reader.fieldnames for c in columns):
        raise InputError(
            f"{options.train_csv} needs the columns {columns[0]!r} and {columns[1]!r} "
            f"(found: {reader.fieldnames}); see --image-column / --caption-column"
        )
    rows = [(r[columns[0]] or "", r[columns[1]] or "") for r in reader]
    empty = sum(1 for path, caption in rows if not path.strip() or not caption.strip())
    if empty:
        raise InputError(f"{options.train_csv}: {empty} row(s) with an empty path or caption")
    return rows


def trainer_arguments(
    options: FinetuneOptions, table: Path, work: Path, device: str, weights: Path | None
) -> list[str]:
    """The open_clip_train command line for these options."""
    architecture, _ = resolve_architecture(options.model)
    argv = [
        f"--train-data={table}",
        "--dataset-type=csv",
        "--csv-separator=\t",
        f"--csv-img-key={IMAGE_COLUMN}",
        f"--csv-caption-key={CAPTION_COLUMN}",
        f"--model={architecture}",
        f"--epochs={options.epochs}",
        f"--batch-size={options.batch_size}",
        f"--lr={options.lr}",
        f"--warmup={options.warmup}",
        f"--wd={options.weight_decay}",
        f"--workers={options.workers}",
        f"--seed={options.seed}",
        f"--device={device}",
        f"--precision={_precision(device)}",
        f"--logs={work}",
        "--name=run",
        "--save-frequency=1",
        "--delete-previous-checkpoint",
        "--log-every-n-steps=50",
        "--report-to=",
    ]
    if weights is not None:
        argv.append(f"--pretrained={weights}")
    return argv


def _precision(device: str) -> str:
    """bf16 autocast on GPUs that have it, fp16 autocast on older ones (T4, V100), and
    plain fp32 on the CPU, where autocast is slower."""
    if device != "cuda":
        return "fp32"
    return "amp_bf16" if torch.cuda.is_bf16_supported() else "amp"


def _run_trainer(config_path: Path, argv: list[str]) -> None:
    """Run open_clip_train.main in a child process with our model config registered."""
    command = [sys.executable, "-m", "meter_batch.tools.train_entry", str(config_path), *argv]
    log.info("training: %s", " ".join(command))
    # offline: a Hugging Face text tower must not fetch weights or a tokenizer either
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise ModelError(
            f"open_clip_train exited with status {result.returncode} (its log is above)"
        )


def _last_checkpoint(folder: Path) -> Path:
    numbered = [p for p in folder.glob("epoch_*.pt") if p.stem[len("epoch_") :].isdigit()]
    checkpoints = sorted(numbered, key=lambda p: int(p.stem[len("epoch_") :]))
    if not checkpoints:
        raise ModelError(f"open_clip_train wrote no checkpoint into {folder}")
    return checkpoints[-1]


def export_safetensors(checkpoint: Path, out: Path, half: bool) -> None:
    """open_clip_train checkpoint (state dict + optimizer) -> weights-only safetensors."""
    from safetensors.torch import save_file

    state = read_state_dict(checkpoint)
    tensors = {
        k.removeprefix("module."): (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in state.items()
    }
    temporary = out.with_suffix(".safetensors.tmp")
    save_file(tensors, str(temporary), metadata={"format": "pt"})
    os.chmod(temporary, 0o644)
    os.replace(temporary, out)
