"""classify: reference probabilities, no image opened, abstain, versions, hostile labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from meter_batch.cli import main
from meter_batch.config import EncodeConfig, ModelSpec
from meter_batch.ingest.encode_run import encode
from meter_batch.labels.classify_run import classify
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from tests.helpers import PROMPTS, encode_args, labels_toml, make_images, one_error_line


def predictions(store: Path) -> list[dict]:
    rows = []
    for path in open_store(store).live_paths("predictions"):
        rows += pq.read_table(path).to_pylist()
    return rows


@pytest.mark.parametrize("scale", [100.0, 3.0])
def test_probabilities_equal_the_reference_loop(encoded, configs, vit_checkpoint, tmp_path, scale):
    # 100 is the seed's loop; with random weights it saturates, so 3 checks mid-range probs too
    images, relpaths, store = encoded
    path = labels_toml(tmp_path, extra=f"logit_scale = {scale}")
    summary = classify(store, path, interactive=False)
    assert (summary.scored, summary.logit_scale) == (14, scale)

    open_clip.add_model_config(configs["vit"])
    model, _, preprocess = open_clip.create_model_and_transforms(
        "mb-tiny-vit", pretrained=str(vit_checkpoint)
    )
    tokenizer = open_clip.get_tokenizer("mb-tiny-vit")
    paths = {r["image_id"]: r["path"] for r in run_query(store, "SELECT * FROM images").to_pylist()}
    spread: list[float] = []
    with torch.no_grad():
        f_txt = model.encode_text(tokenizer(list(PROMPTS.values())))
        f_txt /= f_txt.norm(dim=-1, keepdim=True)
        for row in predictions(store):
            image = preprocess(Image.open(images / paths[row["image_id"]])).unsqueeze(0)
            f_img = model.encode_image(image)
            f_img /= f_img.norm(dim=-1, keepdim=True)
            reference = (scale * f_img @ f_txt.T).softmax(dim=-1)[0].numpy()
            spread.append(float(reference.max()))
            ours = dict(zip(row["top_labels"], row["top_probs"], strict=True))
            got = np.array([ours[label] for label in PROMPTS])
            assert np.abs(got - reference).max() <= 1e-3, (row, reference)
            assert row["label"] == list(PROMPTS)[int(reference.argmax())]
            assert row["prob"] == pytest.approx(float(reference.max()), abs=1e-3)
    assert sorted(paths.values()) == sorted(relpaths)
    if scale < 10:
        assert max(spread) < 0.9  # the comparison covered unsaturated probabilities


def test_classify_never_opens_an_image(encoded, tmp_path, monkeypatch):
    images, _, store = encoded
    shutil.rmtree(images)

    def no_images(*args, **kwargs):
        raise AssertionError("classify opened an image")

    monkeypatch.setattr(Image, "open", no_images)
    summary = classify(store, labels_toml(tmp_path), interactive=False)
    assert summary.scored == 14
    assert len({r["image_id"] for r in predictions(store)}) == 14


def test_abstain_rules_turn_weak_answers_into_unknown(encoded, tmp_path):
    _, _, store = encoded
    classify(store, labels_toml(tmp_path, name="plain", extra="logit_scale = 3"), interactive=False)
    plain = predictions(store)
    # thresholds from this data, so that each rule has something to split
    min_prob = round(float(np.median([r["prob"] for r in plain])), 4)
    min_margin = round(float(np.quantile([r["margin"] for r in plain], 0.25)), 4)
    extra = f"logit_scale = 3\n[abstain]\nmin_prob = {min_prob}\nmin_margin = {min_margin}\n"
    summary = classify(store, labels_toml(tmp_path, extra=extra), interactive=False)
    rows = [r for r in predictions(store) if r["label_set_version"] == summary.version]
    expected = [r["prob"] < min_prob or r["margin"] < min_margin for r in rows]
    assert [r["abstained"] for r in rows] == expected
    assert 0 < sum(expected) < len(rows), (min_prob, min_margin, rows)
    assert summary.abstained == sum(expected)
    for row in rows:
        assert row["label"] == ("unknown" if row["abstained"] else row["top_labels"][0])
        assert row["margin"] == pytest.approx(row["top_probs"][0] - row["top_probs"][1], abs=1e-6)


def test_same_file_is_a_no_op_and_an_edit_is_a_new_version(encoded, tmp_path):
    _, _, store = encoded
    path = labels_toml(tmp_path)
    first = classify(store, path, interactive=False)
    files_before = sorted(p.relative_to(store) for p in store.rglob("*.parquet"))
    again = classify(store, path, interactive=False)
    assert (again.version, again.scored) == (first.version, 0)
    assert sorted(p.relative_to(store) for p in store.rglob("*.parquet")) == files_before

    path.write_text('templates = ["a photo of {}."]\n' + path.read_text(), encoding="utf-8")
    edited = classify(store, path, interactive=False)
    assert edited.version != first.version and edited.scored == 14
    counts = run_query(
        store,
        "SELECT label_set_version, count(*) AS n FROM predictions GROUP BY 1 ORDER BY 1",
    ).to_pylist()
    assert {c["label_set_version"]: c["n"] for c in counts} == {
        first.version: 14,
        edited.version: 14,
    }
    latest = "SELECT DISTINCT label_set_version FROM latest_predictions"
    # a hand classify of an edit scores it without moving what analysts see
    assert run_query(store, latest).column(0).to_pylist() == [first.version]
    classify(store, path, interactive=False, make_current=True)  # as the nightly job does
    assert run_query(store, latest).column(0).to_pylist() == [edited.version]


def test_new_images_are_scored_on_the_next_classify(encoded, tmp_path, configs, vit_checkpoint):
    images, _, store = encoded
    path = labels_toml(tmp_path)
    classify(store, path, interactive=False)
    Image.new("RGB", (80, 60), (200, 10, 10)).save(images / "late.png")
    (images / "sub0").rename(images / "moved")  # 5 files: deleted here, new there
    spec = ModelSpec(str(configs["vit"]), str(vit_checkpoint))
    summary = encode(EncodeConfig(images_dir=images, store=store, model=spec, workers=0), False)
    assert (summary.encoded, summary.deleted, summary.skipped) == (6, 5, 9)
    assert classify(store, path, interactive=False).scored == 6
    assert len(predictions(store)) == 20
    live = run_query(store, "SELECT count(*) FROM latest_predictions").column(0).to_pylist()
    assert live == [15]


def test_hostile_label_text_is_just_data(encoded, tmp_path):
    _, _, store = encoded
    evil = {"x'); DROP TABLE images; --": "x'); DROP TABLE images; --", "../../etc": "../../etc"}
    summary = classify(
        store,
        labels_toml(tmp_path, name="../../etc/passwd", file="evil", **evil),
        interactive=False,
    )
    assert summary.scored == 14
    labels = run_query(store, "SELECT DISTINCT unnest(top_labels) FROM predictions").column(0)
    assert sorted(labels.to_pylist()) == sorted(evil)
    assert run_query(store, "SELECT count(*) FROM images").column(0).to_pylist() == [14]
    names = [p.name for p in store.rglob("*")]
    assert not any("etc" in n or "DROP" in n or "passwd" in n for n in names)
    rows = run_query(
        store,
        "SELECT count(*) FROM predictions WHERE list_contains(top_labels, $l)",
        {"l": "../../etc"},
    ).column(0)
    assert rows.to_pylist() == [14]


def test_learned_logit_scale_is_the_checkpoints(encoded, tmp_path, vit_checkpoint):
    _, _, store = encoded
    summary = classify(
        store, labels_toml(tmp_path, extra='logit_scale = "learned"'), interactive=False
    )
    learned = torch.load(vit_checkpoint, weights_only=True)["logit_scale"].exp().item()
    assert summary.logit_scale == pytest.approx(learned) and learned != 100.0
    assert all(r["logit_scale"] == pytest.approx(learned) for r in predictions(store))


def test_a_scale_that_is_no_number_stops_classify_before_anything_is_scored(
    encoded, tmp_path, capsys
):
    # logit_scale = nan gave probability-NaN predictions, none abstained, exit 0
    _, _, store = encoded
    manifest = (store / "store.json").read_bytes()
    for value in ("nan", "inf", "1e300"):
        path = labels_toml(tmp_path, extra=f"logit_scale = {value}\n[abstain]\nmin_prob = 0.5")
        assert main(["classify", "--store", str(store), "--labels", str(path)]) == 2
        assert "logit_scale must be a finite number > 0 and <= 1000" in one_error_line(capsys)
    assert predictions(store) == []
    assert (store / "store.json").read_bytes() == manifest


def test_a_learned_scale_that_overflows_is_a_model_error(tmp_path, configs, vit_checkpoint, capsys):
    # a finite logit_scale of 100 whose exp() is inf in float32: the weights load, the scale
    # cannot be used
    state = torch.load(vit_checkpoint, weights_only=True)
    state["logit_scale"] = torch.tensor(100.0)
    checkpoint = tmp_path / "unclamped.pt"
    torch.save(state, checkpoint)
    make_images(tmp_path / "images", 2)
    store = tmp_path / "store"
    assert main(encode_args(tmp_path / "images", store, configs["vit"], str(checkpoint))) == 0
    capsys.readouterr()
    path = labels_toml(tmp_path, extra='logit_scale = "learned"')
    assert main(["classify", "--store", str(store), "--labels", str(path)]) == 4
    assert one_error_line(capsys).endswith(
        "the learned logit scale of model mb-tiny-vit is inf: it must be a finite number > 0 "
        "and <= 1000; set a number as the label set's logit_scale instead"
    )
    assert predictions(store) == []
