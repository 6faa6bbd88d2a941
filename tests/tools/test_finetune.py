"""`meter-batch finetune`: open_clip_train on CPU, a checkpoint that encode loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meter_batch.cli import main
from meter_batch.config import ModelSpec
from meter_batch.errors import ConfigError, InputError
from meter_batch.model.loading import load_model
from meter_batch.tools.finetune import FinetuneOptions, finetune

pytest.importorskip("open_clip_train.main", reason="needs the training extra")

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}


def _caption_table(folder: Path, rows: int, separator: str = ",") -> Path:
    """Solid-colour squares with relative paths, as a user's own table might hold them."""
    (folder / "img").mkdir(parents=True)
    lines = [f"filepath{separator}title"]
    for number in range(rows):
        name = list(COLOURS)[number % 3]
        Image.new("RGB", (72, 60), COLOURS[name]).save(folder / "img" / f"{number}.png")
        lines.append(f"img/{number}.png{separator}a {name} square")
    table = folder / "captions.csv"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return table


def _embed(model_spec: ModelSpec) -> np.ndarray:
    loaded = load_model(model_spec)
    pixels = torch.stack(
        [loaded.reference_preprocess(Image.new("RGB", (64, 64), c)) for c in COLOURS.values()]
    )
    with torch.no_grad():
        features = loaded.model.encode_image(pixels)  # type: ignore[operator]  # nn.Module.__getattr__
    return torch.nn.functional.normalize(features, dim=-1).numpy()


@pytest.mark.slow
def test_finetune_trains_from_the_given_checkpoint_and_encode_loads_the_result(
    tmp_path: Path, configs: dict[str, Path], vit_checkpoint: Path
) -> None:
    table = _caption_table(tmp_path / "data", 24)
    options = FinetuneOptions(
        train_csv=table,
        out_dir=tmp_path / "out",
        model=str(configs["vit"]),
        pretrained=str(vit_checkpoint),
        epochs=2,
        batch_size=8,
        lr=1e-3,
        warmup=1,
        device="cpu",
        workers=0,
    )
    result = finetune(options)
    assert result.rows == 24 and result.device == "cpu"
    assert result.weights.name == "model.safetensors" and result.config.name == "mb-tiny-vit.json"
    before = _embed(ModelSpec(str(configs["vit"]), str(vit_checkpoint)))
    after = _embed(ModelSpec(str(result.config), str(result.weights)))
    random_init = _embed(ModelSpec(str(configs["vit"]), "none"))
    cosine = (before * after).sum(axis=1)
    assert np.abs(after - before).max() > 1e-3  # the steps changed the weights
    # ...starting from the checkpoint, not from a fresh random init
    assert cosine.min() > (random_init * after).sum(axis=1).max()


def test_finetune_cli_reports_missing_images_and_columns(
    tmp_path: Path, configs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table = _caption_table(tmp_path / "data", 9, separator="\t")
    (tmp_path / "data" / "img" / "4.png").unlink()
    args = ["finetune", str(table), "--out", str(tmp_path / "o"), "--model", str(configs["vit"])]
    assert main([*args, "--batch-size", "4"]) == 3
    assert "1 image(s)" in capsys.readouterr().err
    assert main([*args, "--caption-column", "text"]) == 3
    assert "needs the columns 'filepath' and 'text'" in capsys.readouterr().err
    (tmp_path / "data" / "img" / "4.png").write_bytes((tmp_path / "data/img/3.png").read_bytes())
    assert main([*args, "--batch-size", "64"]) == 3
    assert "fewer than one batch" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_caption_tables_from_spreadsheets_are_read_as_written(tmp_path: Path) -> None:
    from meter_batch.tools.finetune import write_training_table

    (tmp_path / "a.png").write_bytes((Path(__file__).parents[1] / "conftest.py").read_bytes())
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    table = tmp_path / "t.csv"
    table.write_text(
        '\ufefffilepath,title\nb.png,"a meter, red"\nc.png,"two\nlines"\n', encoding="utf-8"
    )
    out = tmp_path / "out.tsv"
    assert write_training_table(FinetuneOptions(train_csv=table, out_dir=tmp_path), out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[1].endswith("\ta meter, red") and lines[2].endswith("\ttwo lines")
    table.write_text("filepath,title\na.png,not an image\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"not readable as images: a\.png"):
        write_training_table(FinetuneOptions(train_csv=table, out_dir=tmp_path), out)


def test_tags_with_their_own_preprocessing_are_refused() -> None:
    from meter_batch.tools.finetune import _check_default_preprocessing

    _check_default_preprocessing((("interpolation", "bicubic"),), "openai")  # defaults: fine
    with pytest.raises(ConfigError, match="own preprocessing \\(mean, resize_mode\\)"):
        _check_default_preprocessing(
            (("mean", (0.5, 0.5, 0.5)), ("resize_mode", "squash")), "webli"
        )
