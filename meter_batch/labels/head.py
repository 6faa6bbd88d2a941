"""A label-set version's head: what turns a unit image vector into one score per label.

The logits are ``scale · scores``; the probabilities their softmax. Every mode is one of:

- text, prototype, probe: ``scores = x · Wᵀ (+ b)``: the label matrix W (K, D) — text
  embeddings, text mixed with example means, or a fitted probe — and a probe's bias;
- adapter (Tip-Adapter's training-free cache model): the text scores plus
  ``alpha · exp(-beta · (1 - x · Fᵀ)) · L``, the affinity of x to the example vectors F
  (N, D), summed per label by L (N, K one-hot). ``alpha`` is in score units, that is
  Tip-Adapter's α divided by the scale.

A few-shot head is fitted at FIT_SCALE (CLIP's 100 · cosine, Tip-Adapter's convention)
whatever the set's own logit_scale: the head is then a function of the examples alone,
and the logit_scale only sets the temperature, so that `calibrate`'s fitted scale gives
the same head the figures it printed were measured on.

`scores` here is the float64 reference that evaluate and calibrate use; scoring.py
computes the same in float32, fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIT_SCALE = 100.0


@dataclass(frozen=True)
class Cache:
    """An adapter's examples: unit vectors and the label index of each."""

    keys: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, indexes into the head's labels
    alpha: float  # weight of the affinity term, in score (cosine) units
    beta: float  # sharpness: affinity exp(-beta · (1 - cosine))

    def values(self, count: int) -> np.ndarray:
        """(N, K) float32: alpha where an example's label is the column's."""
        values = np.zeros((len(self.labels), count), dtype=np.float32)
        values[np.arange(len(self.labels)), self.labels] = self.alpha
        return values


@dataclass(frozen=True)
class Head:
    weights: np.ndarray  # (K, D) float32
    bias: np.ndarray | None = None  # (K,) float32, score units; a probe's only
    cache: Cache | None = None  # an adapter's only

    @property
    def count(self) -> int:
        return int(self.weights.shape[0])

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(N, K) float64 scores of (N, D) vectors."""
        x = vectors.astype(np.float64)
        scores = x @ self.weights.astype(np.float64).T
        if self.bias is not None:
            scores += self.bias.astype(np.float64)
        if self.cache is not None:
            affinity = np.exp(-self.cache.beta * (1.0 - x @ self.cache.keys.astype(np.float64).T))
            scores += affinity @ self.cache.values(self.count).astype(np.float64)
        return np.asarray(scores)


def text_head(weights: np.ndarray) -> Head:
    return Head(np.asarray(weights, dtype=np.float32))
