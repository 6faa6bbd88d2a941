"""Scoring: probabilities equal a hand computation at every usable scale, without a
warning; scales that are no numbers are refused; a NaN never becomes an answer; a model
that makes NaN text embeddings or an unusable learned scale is a ModelError."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from meter_batch.config import ModelSpec
from meter_batch.errors import ConfigError, ModelError
from meter_batch.labels import scoring
from meter_batch.labels.head import Cache, Head
from meter_batch.labels.label_sets import LEARNED, Label, LabelSet
from meter_batch.labels.scoring import (
    PRODUCTS,
    Scorer,
    ScoreSettings,
    label_matrix,
    resolve_scale,
)
from meter_batch.model.encoder import encode_texts
from meter_batch.model.loading import load_model

LABELS = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # label i: axis i
VECTORS = np.array([[0.6, 0.8], [0.8, 0.6], [0.7071, 0.7071]], dtype=np.float16)


def _settings(scale: float, min_prob: float = 0.0, min_margin: float = 0.0) -> ScoreSettings:
    return ScoreSettings("s", "v1", ("a", "b"), scale, 2, min_prob, min_margin)


def _hand_softmax(vector: np.ndarray, scale: float) -> list[float]:
    """softmax(scale · cosines) in float64, from the float16 values the store holds."""
    cosines = [float(vector[0]), float(vector[1])]  # against the two axes
    top = max(cosines)
    weights = [math.exp(scale * (c - top)) for c in cosines]
    return [w / sum(weights) for w in weights]


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1000.0])
def test_probabilities_equal_a_hand_computation_without_a_warning(scale):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow RuntimeWarning included
        batch = Scorer(LABELS, _settings(scale), max_rows=8).score(np.arange(3), VECTORS)
    rows = batch.to_pylist()
    for row, vector in zip(rows, VECTORS, strict=True):
        expected = dict(zip(("a", "b"), _hand_softmax(vector, scale), strict=True))
        assert [row["top_probs"][i] for i in range(2)] == pytest.approx(
            [expected[label] for label in row["top_labels"]], abs=1e-6
        )
        assert row["prob"] == pytest.approx(max(expected.values()), abs=1e-6)
        assert row["logit_scale"] == scale and row["abstained"] is False
    assert [r["label"] for r in rows[:2]] == ["b", "a"]
    assert rows[2]["top_probs"] == pytest.approx([0.5, 0.5])  # a tie, at any scale
    if scale == 1000.0:  # saturated, but finite: 0.2 apart in cosine is e^-200 in odds
        assert rows[0]["top_probs"] == [1.0, 0.0]


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e300, 1000.5, 0.0, -1.0])
def test_a_scorer_refuses_a_scale_that_is_no_usable_number(scale):
    # a version recorded before scales were checked: NaN probabilities, overflow warnings
    with pytest.raises(ConfigError) as caught:
        Scorer(LABELS, _settings(scale), max_rows=8)
    assert str(caught.value) == (
        f"label set s (version v1) has logit_scale {scale!r}, which must be a finite "
        f"number > 0 and <= 1000; set another in the label set (a new version)"
    )


def test_a_non_finite_embedding_is_abstained_not_answered():
    # NaN compares false with min_prob and min_margin: it was an answer of probability NaN
    vectors = np.array([[0.6, 0.8], [np.nan, np.nan], [np.inf, 0.0]], dtype=np.float16)
    scorer = Scorer(LABELS, _settings(10.0, min_prob=0.5, min_margin=0.1), max_rows=8)
    rows = scorer.score(np.arange(3), vectors).to_pylist()
    assert [(r["label"], r["abstained"]) for r in rows] == [
        ("b", False),
        ("unknown", True),
        ("unknown", True),
    ]


@pytest.fixture
def tiny(configs):
    return load_model(ModelSpec(str(configs["vit"]), "none"))


LABEL_SET = LabelSet("s", (Label("a", ("a meter",)), Label("b", ("a dial",))))


@pytest.mark.parametrize(("raw", "shown"), [(100.0, "inf"), (float("nan"), "nan")])
def test_a_learned_scale_that_is_no_usable_number_is_a_model_error(tiny, raw, shown):
    with torch.no_grad():
        tiny.model.logit_scale.fill_(raw)  # exp(100) overflows float32; NaN stays NaN
    with pytest.raises(ModelError) as caught:
        resolve_scale(tiny, LabelSet("s", LABEL_SET.labels, logit_scale=LEARNED))
    assert str(caught.value) == (
        f"the learned logit scale of model mb-tiny-vit is {shown}: it must be a finite "
        f"number > 0 and <= 1000; set a number as the label set's logit_scale instead"
    )


def test_a_learned_scale_is_exp_of_the_models(tiny):
    with torch.no_grad():
        tiny.model.logit_scale.fill_(math.log(20.0))
    scale = resolve_scale(tiny, LabelSet("s", LABEL_SET.labels, logit_scale=LEARNED))
    assert scale == pytest.approx(20.0, rel=1e-6)


def test_nan_text_weights_are_a_model_error_not_a_nan_label_matrix(tiny):
    assert np.isfinite(label_matrix(tiny, LABEL_SET)).all()
    with torch.no_grad():
        tiny.model.text_projection.fill_(float("nan"))
    message = (
        "model mb-tiny-vit produces non-finite text embeddings (NaN/inf) for 2 of 2 texts; "
        "the weights are damaged"
    )
    with pytest.raises(ModelError) as caught:
        encode_texts(tiny, ["a meter", "a dial"])
    assert str(caught.value) == message
    with pytest.raises(ModelError, match="non-finite text embeddings"):
        label_matrix(tiny, LABEL_SET)


@pytest.mark.parametrize("labels", [1, 3])
def test_a_label_matrix_read_only_from_arrow_is_copied_not_wrapped(labels):
    """The (K, D) matrix is the layout the product takes: wrapping Arrow's read-only
    memory as it is made torch warn ("The given NumPy array is not writable")."""
    matrix = np.ones((labels, 4), dtype=np.float32)
    matrix.flags.writeable = False  # as read_label_matrix returns it
    ids = tuple(f"l{i}" for i in range(labels))
    scorer = Scorer(matrix, ScoreSettings("s", "v1", ids, 1.0, top_k=1), max_rows=2)
    assert scorer.columns.numpy().flags.writeable
    assert not np.shares_memory(scorer.columns.numpy(), matrix)


def test_a_label_below_its_own_threshold_abstains_and_the_other_does_not():
    settings = ScoreSettings("s", "v1", ("a", "b"), 10.0, 2, label_min_probs=(0.0, 0.9))
    rows = Scorer(LABELS, settings, max_rows=8).score(np.arange(3), VECTORS).to_pylist()
    # row 0 is "b" at softmax(10 * [0.6, 0.8]) = 0.881 < 0.9; row 1 is "a" at 0.881 >= 0
    assert [(r["label"], r["abstained"]) for r in rows[:2]] == [("unknown", True), ("a", False)]
    assert rows[0]["prob"] == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-3)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1000.0])
def test_probabilities_stay_within_1e_4_of_float64_across_sub_chunks(scale):
    """300 rows: the float16 -> float32 product runs 128 rows at a time (two full
    sub-chunks and a short one); ten labels, top 3, against softmax in float64."""
    rng = np.random.default_rng(5)
    vectors, labels = _unit(rng, 300).astype(np.float16), _unit(rng, 10).astype(np.float32)
    ids = tuple(f"l{i}" for i in range(10))
    scorer = Scorer(labels, ScoreSettings("s", "v1", ids, scale, 3), max_rows=4096)
    rows = scorer.score(np.arange(300), vectors).to_pylist()
    logits = vectors.astype(np.float64) @ labels.astype(np.float64).T * scale
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    for row, probs in zip(rows, expected, strict=True):
        order = np.argsort(-probs, kind="stable")[:3]
        assert row["top_labels"] == [ids[i] for i in order] or np.isclose(
            probs[order[1]], probs[order[2]]
        )
        got = [probs[ids.index(label)] for label in row["top_labels"]]
        assert np.abs(np.asarray(row["top_probs"]) - got).max() < 1e-4


def test_top_labels_follow_a_stable_sort_and_ties_go_to_the_first_label():
    """The top labels come from passes across the (labels, rows) logits, not topk: equal
    label vectors tie exactly, and the earlier label comes first, every rank."""
    rng = np.random.default_rng(11)
    labels = _unit(rng, 6).astype(np.float32)
    labels[4] = labels[1]  # 1 and 4 tie on every image
    labels[5] = labels[2]
    vectors = _unit(rng, 200).astype(np.float16)
    ids = tuple(f"l{i}" for i in range(6))
    scorer = Scorer(labels, ScoreSettings("s", "v1", ids, 50.0, 4), max_rows=256)
    rows = scorer.score(np.arange(200), vectors).to_pylist()
    logits = (vectors.astype(np.float32) @ labels.T).astype(np.float64)
    assert np.array_equal(logits[:, 1], logits[:, 4])  # the ties are exact
    for row, image in zip(rows, logits, strict=True):
        order = np.argsort(-image, kind="stable")[:4]  # equal: the lower index first
        assert row["top_labels"] == [ids[i] for i in order]
        assert row["label"] == ids[order[0]]


def test_a_batch_stays_as_it_was_scored_when_its_scorer_scores_the_next():
    """Batches are written on another thread while the scorer fills its buffers again:
    a batch holding views of them changed under the writer (caught by a repair test)."""
    rng = np.random.default_rng(3)
    labels = _unit(rng, 4).astype(np.float32)
    ids = tuple(f"l{i}" for i in range(4))
    scorer = Scorer(labels, ScoreSettings("s", "v1", ids, 100.0, 3), max_rows=64)
    first = scorer.score(np.arange(10), _unit(rng, 10).astype(np.float16))
    kept = first.to_pylist()
    scorer.score(np.arange(10, 20), _unit(rng, 10).astype(np.float16))
    assert first.to_pylist() == kept


def _unit(rng: np.random.Generator, rows: int, dim: int = 64) -> np.ndarray:
    """``rows`` random unit vectors, float64."""
    vectors = rng.standard_normal((rows, dim))
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def _reference_probs(head: Head, vectors: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale · scores) from head.py's float64 scores."""
    logits = scale * head.scores(vectors)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(expected / expected.sum(axis=1, keepdims=True))


def _few_shot_heads(rng: np.random.Generator, labels: np.ndarray) -> dict[str, Head]:
    """A probe-like head (weights and bias) and an adapter (16 examples x 10 labels)."""
    keys = rng.standard_normal((160, labels.shape[1])).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    bias = (0.05 * rng.standard_normal(10)).astype(np.float32)
    cache = Cache(keys, np.arange(160, dtype=np.int64) % 10, alpha=0.02, beta=5.5)
    return {"probe": Head(labels, bias=bias), "adapter": Head(labels, cache=cache)}


@pytest.mark.parametrize("mode", ["probe", "adapter"])
@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_few_shot_heads_score_within_1e_4_of_their_float64_reference(mode, scale):
    """The float32 fast path (one product for text and example cosines, the affinity in
    place) against head.py's float64 scores, across sub-chunks."""
    rng = np.random.default_rng(6)
    vectors, labels = _unit(rng, 300).astype(np.float16), _unit(rng, 10).astype(np.float32)
    head = _few_shot_heads(rng, labels)[mode]
    ids = tuple(f"l{i}" for i in range(10))
    rows = Scorer(head, ScoreSettings("s", "v1", ids, scale, 3), max_rows=4096).score(
        np.arange(300), vectors
    )
    expected = _reference_probs(head, vectors, scale)
    assert rows.column("label").to_pylist() == [ids[i] for i in expected.argmax(axis=1)]
    got = np.asarray(rows.column("prob").to_pylist())
    assert np.abs(got - expected.max(axis=1)).max() < 1e-4
    # the few-shot terms matter here: plain text scores would answer otherwise somewhere
    text = scale * vectors.astype(np.float64) @ labels.astype(np.float64).T
    assert (text.argmax(axis=1) != expected.argmax(axis=1)).any()


@pytest.mark.parametrize("kernel", ["torch", "numpy"])
def test_both_product_kernels_give_the_float64_answers(kernel, monkeypatch):
    """METER_BATCH_PRODUCT picks the BLAS (classify picks by CPU vendor otherwise): each
    gives the same labels and probabilities within 1e-4 of float64, adapters included."""
    monkeypatch.setenv("METER_BATCH_PRODUCT", kernel)
    rng = np.random.default_rng(7)
    vectors, labels = _unit(rng, 300).astype(np.float16), _unit(rng, 10).astype(np.float32)
    ids = tuple(f"l{i}" for i in range(10))
    for head in (Head(labels), _few_shot_heads(rng, labels)["adapter"]):
        scorer = Scorer(head, ScoreSettings("s", "v1", ids, 100.0, 3), max_rows=4096)
        assert scorer.product is PRODUCTS[kernel]
        rows = scorer.score(np.arange(300), vectors)
        expected = _reference_probs(head, vectors, 100.0)
        assert rows.column("label").to_pylist() == [ids[i] for i in expected.argmax(axis=1)]
        got = np.asarray(rows.column("prob").to_pylist())
        assert np.abs(got - expected.max(axis=1)).max() < 1e-4


def test_an_unknown_product_kernel_is_a_config_error(monkeypatch):
    monkeypatch.setenv("METER_BATCH_PRODUCT", "fortran")
    with pytest.raises(ConfigError, match="METER_BATCH_PRODUCT must be one of torch, numpy"):
        Scorer(LABELS, _settings(10.0), max_rows=8)


def test_the_kernel_follows_the_cpu_vendor(monkeypatch):
    monkeypatch.delenv("METER_BATCH_PRODUCT", raising=False)
    for vendor, expected in (("AuthenticAMD", "numpy"), ("GenuineIntel", "torch"), ("", "torch")):
        monkeypatch.setattr(scoring, "cpu_vendor", lambda v=vendor: v)
        assert scoring.product_kernel_name() == expected
