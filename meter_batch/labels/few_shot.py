"""Few-shot heads: a label set's text embeddings improved with labelled example vectors.

text matrix + example vectors -> per mode, a grid of hyper-parameters -> k-fold
cross-validation on the examples only (fit on k-1 folds, score the held-out one) -> the
best by held-out accuracy (then NLL; ties go to the candidate nearest plain text) -> the
head refitted on every example. Pure numpy, and torch's L-BFGS for the probe.

- prototype: each label's vector is
  ``normalize((1 - mix) · text + mix · normalize(mean(examples)))``;
- adapter: Tip-Adapter's cache model (head.py), α and β from its paper's ranges;
- probe: multinomial logistic regression on the vectors, started from the text weights
  (times the scale) and pulled back to them by an L2 penalty ``l2 · (‖W - T‖² + ‖b‖²)``,
  so that a label with few examples stays near its text, and an uneven count of examples
  per label does not become a prior for the whole store.

Callers fit at head.FIT_SCALE (see head.py), whatever the set's logit_scale.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from meter_batch.labels.head import Cache, Head
from meter_batch.store.records import FewShotFit

MAX_FOLDS = 5
MIXES = tuple(round(0.1 * i, 1) for i in range(11))
ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # Tip-Adapter units (with logits 100·cos)
BETAS = (1.0, 2.0, 3.5, 5.5, 8.0, 12.0)
L2S = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)  # strongest first: nearest the text weights


@dataclass(frozen=True)
class Examples:
    """Labelled example vectors."""

    vectors: np.ndarray  # (N, D) float32, unit length
    labels: np.ndarray  # (N,) int64 indexes into the label set's labels

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples(self.vectors[rows], self.labels[rows])


@dataclass(frozen=True)
class FittedHead:
    head: Head
    fit: FewShotFit


Params = dict[str, float]
Fitter = Callable[[np.ndarray, Examples, float, Params], Head]


def fit_head(mode: str, text: np.ndarray, examples: Examples, scale: float) -> FittedHead:
    """The head of ``mode`` with its cross-validated hyper-parameters."""
    fitter, grid = _MODES[mode]
    folds = example_folds(examples.labels, min(MAX_FOLDS, len(examples.labels)))
    best: tuple[float, float] | None = None
    chosen: Params = grid[0]
    for params in grid:
        held_out = _cross_validate(fitter, text, examples, scale, params, folds)
        if best is None or held_out > best:  # strictly better: ties keep the earlier
            best, chosen = held_out, params
    assert best is not None
    text_accuracy = _accuracy(examples.vectors @ text.T, examples.labels)
    fit = FewShotFit(
        mode=mode,
        examples=len(examples.labels),
        cv_folds=len(folds),
        cv_accuracy=round(best[0], 6),
        cv_text_accuracy=round(text_accuracy, 6),
        mix=chosen.get("mix"),
        alpha=chosen.get("alpha"),
        beta=chosen.get("beta"),
        l2=chosen.get("l2"),
    )
    return FittedHead(fitter(text, examples, scale, chosen), fit)


def example_folds(labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Held-out rows of k stratified folds: each label's examples dealt round the folds
    in order, each label starting where the last one stopped (folds of even size)."""
    fold_of = np.zeros(len(labels), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        fold_of[rows] = (start + np.arange(len(rows))) % k
        start += len(rows)
    return [np.flatnonzero(fold_of == fold) for fold in range(k)]


def _cross_validate(
    fitter: Fitter,
    text: np.ndarray,
    examples: Examples,
    scale: float,
    params: Params,
    folds: list[np.ndarray],
) -> tuple[float, float]:
    """(held-out accuracy, minus held-out NLL): larger is better."""
    logits = np.zeros((len(examples.labels), len(text)))
    everything = np.arange(len(examples.labels))
    for held in folds:
        head = fitter(text, examples.subset(np.setdiff1d(everything, held)), scale, params)
        logits[held] = scale * head.scores(examples.vectors[held])
    return _accuracy(logits, examples.labels), -_nll(logits, examples.labels)


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean())


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float((log_norm - shifted[np.arange(len(labels)), labels]).mean())


def _prototype(text: np.ndarray, examples: Examples, scale: float, params: Params) -> Head:
    mix = params["mix"]
    weights = text.astype(np.float64).copy()
    for label in np.unique(examples.labels):
        mean = examples.vectors[examples.labels == label].astype(np.float64).mean(axis=0)
        mixed = (1 - mix) * weights[label] + mix * mean / np.linalg.norm(mean)
        weights[label] = mixed / np.linalg.norm(mixed)
    return Head(weights.astype(np.float32))


def _adapter(text: np.ndarray, examples: Examples, scale: float, params: Params) -> Head:
    cache = Cache(
        keys=examples.vectors.astype(np.float32),
        labels=examples.labels.astype(np.int64),
        alpha=params["alpha"] / scale,  # Tip-Adapter adds α·affinity to the scaled logits
        beta=params["beta"],
    )
    return Head(text.astype(np.float32), cache=cache)


def _probe(text: np.ndarray, examples: Examples, scale: float, params: Params) -> Head:
    """Fitted in logit units (W' = scale · W), full batch, L-BFGS, float64."""
    target = torch.from_numpy(text.astype(np.float64)) * scale
    x = torch.from_numpy(examples.vectors.astype(np.float64))
    y = torch.from_numpy(examples.labels.astype(np.int64))
    weights = target.clone().requires_grad_(True)
    bias = torch.zeros(len(text), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weights, bias], max_iter=200, tolerance_grad=1e-8, line_search_fn="strong_wolfe"
    )

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weights.T + bias, y)
        value = value + params["l2"] * (((weights - target) ** 2).sum() + (bias**2).sum())
        value.backward()
        return value

    optimiser.step(loss)
    with torch.no_grad():
        return Head((weights / scale).float().numpy(), bias=(bias / scale).float().numpy())


def _grid(**axes: tuple[float, ...]) -> list[Params]:
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


_MODES: dict[str, tuple[Fitter, list[Params]]] = {
    "prototype": (_prototype, _grid(mix=MIXES)),
    "adapter": (_adapter, _grid(alpha=ALPHAS, beta=BETAS)),
    "probe": (_probe, _grid(l2=L2S)),
}


def describe(fit: FewShotFit) -> str:
    """One line: the mode, its hyper-parameters, and held-out accuracy on the examples."""
    params = {"mix": fit.mix, "alpha": fit.alpha, "beta": fit.beta, "l2": fit.l2}
    chosen = ", ".join(f"{k}={v:g}" for k, v in params.items() if v is not None)
    return (
        f"{fit.mode} ({chosen}) from {fit.examples} examples: {fit.cv_accuracy:.1%} on "
        f"held-out examples ({fit.cv_folds} folds) against {fit.cv_text_accuracy:.1%} "
        "for the text alone"
    )
