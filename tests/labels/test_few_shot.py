"""Few-shot label sets: uninformative prompts rescued by example images in every mode,
hyper-parameters chosen on the examples and recorded, examples outside the store encoded
once, a set's own examples left out of its evaluation, one-line errors for bad examples,
and text mode as it was."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from meter_batch.cli import main
from meter_batch.labels import examples as examples_module
from meter_batch.labels.classify_run import classify
from meter_batch.labels.evaluate_run import evaluate
from meter_batch.labels.few_shot import Examples, example_folds, fit_head
from meter_batch.labels.label_sets import load_label_set
from meter_batch.labels.predictions import read_head
from meter_batch.store.catalog import run_query
from meter_batch.store.commit import open_store
from meter_batch.tools.demo import encode_demo
from meter_batch.tools.synthetic import render_one
from tests.helpers import one_error_line

IDS = {"digital": "a", "rotary": "b", "analog": "c"}
# prompts that say nothing about meter types: the text alone is near chance
VAGUE = {"a": "a photo", "b": "an image", "c": "a picture"}


@dataclass(frozen=True)
class Meters:
    root: Path
    store: Path
    examples: list[tuple[str, str]]  # (stored path, label)
    test: list[tuple[str, str]]
    outside: list[tuple[Path, str]]  # files not in the store


def _render(folder: Path, seed: int, count: int) -> list[tuple[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name, data, _, spec = render_one(seed, index, 1)
        (folder / name).write_bytes(data)
        rows.append((name, IDS[spec.meter_type]))
    return rows


@pytest.fixture(scope="module")
def meters(tmp_path_factory: pytest.TempPathFactory) -> Meters:
    """The shipped demo model's store of 15 example and 30 test meters (disjoint seeds),
    and 6 more meters outside the store."""
    root = tmp_path_factory.mktemp("meters")
    images = root / "images"
    examples = [(f"ex/{n}", label) for n, label in _render(images / "ex", 77, 15)]
    test = [(f"test/{n}", label) for n, label in _render(images / "test", 78, 30)]
    outside = [(root / "outside" / n, label) for n, label in _render(root / "outside", 79, 6)]
    encode_demo(images, root / "store", workers=0)
    return Meters(root, root / "store", examples, test, outside)


def _csv(path: Path, rows: Sequence[tuple[object, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def _vague_set(folder: Path, name: str, mode: str = "text", extra: str = "") -> Path:
    body = f'name = "{name}"\n'
    if mode != "text":
        body += f'mode = "{mode}"\nexamples_file = "examples.csv"\n'
    body += extra
    for label_id, prompt in VAGUE.items():
        body += f'[[labels]]\nid = "{label_id}"\nprompts = ["{prompt}"]\n'
    path = folder / f"{name}.toml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture
def work(meters: Meters, tmp_path: Path) -> tuple[Meters, Path]:
    """A copy of the store (tests commit to it) and the stored examples as examples.csv."""
    store = tmp_path / "store"
    shutil.copytree(meters.store, store)
    _csv(tmp_path / "examples.csv", list(meters.examples))
    return Meters(meters.root, store, meters.examples, meters.test, meters.outside), tmp_path


@pytest.mark.parametrize("mode", ["prototype", "adapter", "probe"])
def test_vague_prompts_are_rescued_by_examples(work, mode):
    meters, folder = work
    text, few = _vague_set(folder, "vague"), _vague_set(folder, f"vague-{mode}", mode)
    truth = _csv(folder / "truth.csv", list(meters.test))
    report = evaluate(meters.store, [text, few], truth)
    zero_shot, few_shot = (s.evaluation.accuracy.value for s in report.sets)
    assert report.sets[1].mode == mode and report.sets[1].evaluation.images == 30
    assert zero_shot <= 0.5  # near chance (1/3): the prompts name no meter type
    assert few_shot >= 0.9  # 5 examples of each type, judged on 30 other meters
    assert few_shot - zero_shot >= 0.4


@pytest.mark.parametrize(
    ("mode", "chosen"),
    [("prototype", {"mix"}), ("adapter", {"alpha", "beta"}), ("probe", {"l2"})],
)
def test_the_fit_is_recorded_with_the_version(work, capsys, mode, chosen):
    meters, folder = work
    summary = classify(meters.store, _vague_set(folder, "v", mode), interactive=False)
    assert summary.scored == 45 and summary.examples_encoded == 0
    assert summary.few_shot is not None and summary.few_shot.startswith(mode)
    (row,) = run_query(meters.store, "SELECT mode, few_shot FROM label_sets").to_pylist()
    fit = json.loads(row["few_shot"])
    assert row["mode"] == mode and fit["mode"] == mode
    assert (fit["examples"], fit["cv_folds"]) == (15, 5)
    assert {k for k in ("mix", "alpha", "beta", "l2") if fit[k] is not None} == chosen
    assert fit["cv_accuracy"] > fit["cv_text_accuracy"]
    assert main(["labelsets", str(meters.store)]) == 0
    listed = capsys.readouterr().out
    assert f"{mode} (15 ex., " in listed and all(f"{name}=" in listed for name in chosen)
    entry = open_store(meters.store).manifest.label_sets[0]
    matrix = pq.read_table(meters.store / entry.matrix)
    assert ("bias" in matrix.column_names) == (mode == "probe")  # a probe's weights, no pickle
    assert entry.examples is not None
    stored = pq.read_table(meters.store / entry.examples)
    assert sorted(stored.column("ref").to_pylist()) == sorted(p for p, _ in meters.examples)


def test_the_stored_head_gives_what_the_fitted_one_gave(work):
    """Predictions of a version's first classify (its head in memory) equal a later
    classify's (its head read back from the store), on the same vectors."""
    meters, folder = work
    labels = _vague_set(folder, "v", "adapter")
    classify(meters.store, labels, interactive=False)
    first = _predictions(meters.store)
    entry = open_store(meters.store).manifest.label_sets[0]
    store = open_store(meters.store)
    head = read_head(store, entry)
    again = (head.weights, head.cache.keys if head.cache else None)
    assert again[1] is not None and again[1].shape == (15, store.identity.embed_dim)
    vectors = _stored_vectors(meters.store)
    probs = np.exp(
        entry.logit_scale * (head.scores(vectors) - head.scores(vectors).max(1)[:, None])
    )
    probs /= probs.sum(axis=1, keepdims=True)
    labels_by_hand = [entry.labels[i] for i in probs.argmax(axis=1)]
    assert [first[i][0] for i in sorted(first)] == labels_by_hand
    assert [first[i][1] for i in sorted(first)] == pytest.approx(probs.max(axis=1), abs=1e-4)


def _predictions(store: Path) -> dict[int, tuple[str, float]]:
    rows = run_query(store, "SELECT image_id, label, prob FROM predictions").to_pylist()
    return {r["image_id"]: (r["label"], r["prob"]) for r in rows}


def _stored_vectors(store: Path) -> np.ndarray:
    from meter_batch.store.read import vectors_of

    opened = open_store(store)
    ids = run_query(store, "SELECT image_id FROM images ORDER BY image_id").column(0).to_pylist()
    return vectors_of(opened, ids)[1]


def _count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many example files each encode_files call got, in order."""
    calls: list[int] = []
    real = examples_module.encode_files

    def counting(loaded: Any, files: list[Path], role: str = "example") -> list[np.ndarray]:
        calls.append(len(files))
        return real(loaded, files, role)

    monkeypatch.setattr(examples_module, "encode_files", counting)
    return calls


def test_examples_outside_the_store_are_encoded_once(work, monkeypatch):
    meters, folder = work
    calls = _count_encodes(monkeypatch)
    _csv(folder / "examples.csv", [(str(p), label) for p, label in meters.outside])
    first = classify(meters.store, _vague_set(folder, "v", "prototype"), interactive=False)
    assert (first.examples_encoded, calls) == (6, [6])
    again = classify(meters.store, _vague_set(folder, "v", "prototype"), interactive=False)
    assert (again.scored, again.examples_encoded, calls) == (0, 0, [6])
    # another version (other prompts, another mode) of the same examples: known already
    other = classify(meters.store, _vague_set(folder, "w", "probe"), interactive=False)
    assert (other.examples_encoded, calls) == (0, [6])
    truth = _csv(folder / "truth.csv", list(meters.test))
    evaluate(meters.store, [_vague_set(folder, "x", "adapter")], truth)  # never classified
    assert calls == [6]


def test_example_files_evaluate_encodes_are_kept_for_every_later_command(work, monkeypatch):
    """evaluate (and calibrate) store nothing of a version they were not asked to
    classify, but the example files they had to encode are committed, once."""
    meters, folder = work
    calls = _count_encodes(monkeypatch)
    _csv(folder / "examples.csv", [(str(p), label) for p, label in meters.outside])
    truth = _csv(folder / "truth.csv", list(meters.test))
    sets = [_vague_set(folder, n, m) for n, m in (("x", "adapter"), ("y", "probe"))]
    evaluate(meters.store, sets, truth)  # two sets, the same six files
    assert calls == [6]
    assert len(open_store(meters.store).manifest.example_parts) == 1
    from meter_batch.labels.calibrate_run import calibrate

    calibrate(meters.store, _vague_set(folder, "z", "prototype"), truth, folder / "z2.toml", k=3)
    summary = classify(meters.store, sets[0], interactive=False)
    assert (calls, summary.examples_encoded) == ([6], 0)
    assert main(["verify", str(meters.store)]) == 0


def test_a_file_with_the_bytes_of_a_stored_image_is_used_as_stored(work, monkeypatch):
    meters, folder = work
    monkeypatch.setattr(examples_module, "encode_files", _must_not_encode)
    copies = folder / "copies"
    copies.mkdir()
    rows = []
    for relpath, label in meters.examples:
        shutil.copy(meters.root / "images" / relpath, copies / Path(relpath).name)
        rows.append((f"copies/{Path(relpath).name}", label))
    _csv(folder / "examples.csv", rows)
    labels = _vague_set(folder, "v", "prototype")
    summary = classify(meters.store, labels, interactive=False)
    assert summary.examples_encoded == 0
    # and the stored images with those bytes are left out of its evaluation
    truth = _csv(folder / "truth.csv", [*meters.examples, *meters.test])
    (result,) = evaluate(meters.store, [labels], truth).sets
    assert (result.examples_left_out, result.evaluation.images) == (15, 30)


def _must_not_encode(*args: object, **kwargs: object) -> list[np.ndarray]:
    raise AssertionError("an example was encoded although the store has its bytes")


def test_evaluate_leaves_a_sets_own_examples_out(work, capsys):
    meters, folder = work
    truth = _csv(folder / "truth.csv", [*meters.examples, *meters.test])
    labels = [_vague_set(folder, "vague"), _vague_set(folder, "vague-probe", "probe")]
    report = evaluate(meters.store, labels, truth)
    text, probe = report.sets
    assert (text.examples_left_out, text.evaluation.images) == (0, 45)
    assert (probe.examples_left_out, probe.evaluation.images) == (15, 30)
    assert main(["evaluate", "--store", str(meters.store), "--truth", str(truth),
                 "--labels", str(labels[1])]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "examples left out" in out and " 15" in out
    recorded = run_query(
        meters.store, "SELECT label_set, images, examples_left_out FROM evaluations"
    ).to_pylist()
    assert {"label_set": "vague-probe", "images": 30, "examples_left_out": 15} in recorded
    # a set without examples records none: its manifest entry is what older releases read
    assert {"label_set": "vague", "images": 45, "examples_left_out": None} in recorded
    text_records = [
        e for e in open_store(meters.store).manifest.evaluations if e.label_set == "vague"
    ]
    assert text_records and all("examples_left_out" not in e.to_json() for e in text_records)


def test_text_mode_is_todays_set(work):
    """mode = "text" written out is the same version, with the same predictions, as the
    file without it (and both the same version as before few-shot modes existed: the
    compatibility tests classify an old store's label set and score nothing new)."""
    meters, folder = work
    plain = _vague_set(folder, "vague")
    written = folder / "written.toml"
    written.write_text('mode = "text"\n' + plain.read_text(encoding="utf-8"), encoding="utf-8")
    identity = open_store(meters.store).identity
    assert load_label_set(plain).version(identity) == load_label_set(written).version(identity)
    first = classify(meters.store, plain, interactive=False)
    second = classify(meters.store, written, interactive=False)
    assert (first.version, first.scored, second.scored) == (second.version, 45, 0)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ('mode = "text"\nexamples_file = "examples.csv"\n', 'which mode "text" ignores'),
        ('mode = "adapter"\n', "learns from example images"),
        ('mode = "knn"\n', "mode must be one of 'text', 'prototype', 'adapter', 'probe'"),
        ('mode = "probe"\nexamples_file = "nope.csv"\n', "examples file not found:"),
        ('mode = "probe"\nexamples_file = "bad-label.csv"\n', "label 'zz' is not in the set"),
        ('mode = "probe"\nexamples_file = "bad-header.csv"\n', "needs columns path,label"),
        ('mode = "probe"\nexamples_file = "missing.csv"\n', "is neither a live image of store"),
        ('mode = "probe"\nexamples_file = "twice.csv"\n', "cannot teach two labels"),
        ('mode = "probe"\nexamples_file = "one.csv"\n', "it needs at least 2"),
    ],
)
def test_bad_examples_are_one_line_errors(work, capsys, edit, expected):
    meters, folder = work
    (path_a, _), (path_b, _) = meters.examples[:2]
    _csv(folder / "bad-label.csv", [(path_a, "zz")])
    (folder / "bad-header.csv").write_text("file,label\nx.jpg,a\n", encoding="utf-8")
    _csv(folder / "missing.csv", [(path_a, "a"), ("no/such.jpg", "b")])
    _csv(folder / "twice.csv", [(path_a, "a"), (path_a, "b")])
    _csv(folder / "one.csv", [(path_a, "a"), (path_a, "a")])
    labels = _vague_set(folder, "bad", extra=edit)
    code = main(["classify", "--store", str(meters.store), "--labels", str(labels)])
    assert code == 2
    assert expected in one_error_line(capsys)
    assert path_b  # the second example exists: the errors are about the rows named


def test_an_undecodable_example_file_is_one_input_error(work, capsys):
    meters, folder = work
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    _csv(folder / "examples.csv", [(meters.examples[0][0], "a"), ("broken.jpg", "b")])
    labels = _vague_set(folder, "v", "prototype")
    assert main(["classify", "--store", str(meters.store), "--labels", str(labels)]) == 3
    said = capsys.readouterr().err.strip().splitlines()
    assert said[0].endswith("encoding 1 example image(s) that are not in the store (once)")
    assert len(said) == 2 and f"error: cannot use {broken} as example: " in said[1]


def test_folds_deal_each_labels_examples_round_in_order():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    folds = example_folds(labels, 3)
    assert [f.tolist() for f in folds] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


def _toy_examples(
    rng: np.random.Generator, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three 8-d text vectors (axes) and ``count`` random unit examples, labels i mod 3."""
    vectors = rng.normal(size=(count, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.eye(3, 8, dtype=np.float32), vectors, np.arange(count, dtype=np.int64) % 3


def test_a_prototype_is_the_mix_of_text_and_example_mean_by_hand():
    text, vectors, labels = _toy_examples(np.random.default_rng(0), 12)
    fitted = fit_head("prototype", text, Examples(vectors, labels), 10.0)
    mix = fitted.fit.mix
    assert mix is not None
    for k in range(3):
        mean = vectors[labels == k].astype(np.float64).mean(axis=0)
        by_hand = (1 - mix) * text[k] + mix * mean / np.linalg.norm(mean)
        by_hand /= np.linalg.norm(by_hand)
        assert fitted.head.weights[k] == pytest.approx(by_hand, abs=1e-6)


def test_an_adapters_scores_are_tip_adapters_by_hand():
    text, vectors, labels = _toy_examples(np.random.default_rng(1), 9)
    head = fit_head("adapter", text, Examples(vectors, labels), 50.0).head
    assert head.cache is not None
    alpha, beta = head.cache.alpha * 50.0, head.cache.beta  # Tip-Adapter's own α
    query = vectors[:2].astype(np.float64)
    affinity = np.exp(-beta * (1 - query @ vectors.astype(np.float64).T))
    one_hot = np.eye(3)[labels]
    by_hand = 50.0 * query @ text.T + alpha * affinity @ one_hot  # logits, Tip-Adapter's eq. 6
    assert 50.0 * head.scores(vectors[:2]) == pytest.approx(by_hand, rel=1e-6)


def test_calibrating_a_few_shot_set_leaves_its_examples_out_and_keeps_its_mode(work):
    from meter_batch.labels.calibrate_run import calibrate

    meters, folder = work
    truth = _csv(folder / "truth.csv", [*meters.examples, *meters.test])
    labels = _vague_set(folder, "v", "adapter")
    out = folder / "out" / "v-calibrated.toml"
    out.parent.mkdir()
    report = calibrate(meters.store, labels, truth, out, k=3)
    assert report.images == 30  # the 15 examples are not calibrated on
    written = load_label_set(out)
    assert (written.mode, written.examples_file) == ("adapter", str(folder / "examples.csv"))
    assert written.logit_scale == pytest.approx(report.fitted.scale, rel=1e-5)


def test_a_calibrated_few_shot_set_keeps_its_head(work):
    """Heads are fitted at CLIP's 100 whatever the set's logit_scale: the version
    calibrate writes (another scale) has the same cross-validated head, only cooler or
    hotter, so calibrate's figures are those of what gets classified."""
    from meter_batch.labels.calibrate_run import calibrate

    meters, folder = work
    truth = _csv(folder / "truth.csv", list(meters.test))
    labels = _vague_set(folder, "v", "adapter")
    out = folder / "v-calibrated.toml"
    report = calibrate(meters.store, labels, truth, out, k=3)
    assert report.fitted.scale != pytest.approx(100.0)
    classify(meters.store, labels, interactive=False)
    classify(meters.store, out, interactive=False)
    store = open_store(meters.store)
    original, calibrated = store.manifest.label_sets
    assert calibrated.logit_scale == pytest.approx(report.fitted.scale, rel=1e-5)
    assert original.few_shot == calibrated.few_shot  # the same alpha, beta and CV figures
    first, second = read_head(store, original), read_head(store, calibrated)
    assert np.array_equal(first.weights, second.weights)
    assert first.cache is not None and second.cache is not None
    assert first.cache.alpha == second.cache.alpha and first.cache.beta == second.cache.beta
