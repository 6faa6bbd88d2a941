"""Stored embeddings × label matrix -> top-k predictions, streamed chunk by chunk.

Reads only the vectors files (never an image, never the model). Per chunk: float16 ->
float32 into a reused buffer and one product with the (K, D) label matrix, a few hundred
rows at a time, into (K, rows) logits (a probe adds its bias; an adapter's matrix
carries its example vectors too, whose affinities add to the text scores: head.py);
then, across the K rows of logits, each image's best labels and the softmax of them
(shifted by each image's maximum before scaling, so no scale overflows it).
Buffers are allocated once: fresh multi-megabyte allocations per chunk cost more than
the arithmetic. Memory stays flat in N: nothing N-sized is ever held."""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from threadpoolctl import threadpool_limits

from meter_batch.errors import ConfigError, ModelError
from meter_batch.labels.head import Head, text_head
from meter_batch.labels.label_sets import LEARNED, UNKNOWN, LabelSet, scale_problem
from meter_batch.model.encoder import encode_texts
from meter_batch.model.loading import LoadedModel
from meter_batch.prefetch import prefetch
from meter_batch.store.schema import predictions_schema
from meter_batch.store.vectors import iter_vectors


@dataclass(frozen=True)
class ScoreSettings:
    label_set: str
    version: str
    label_ids: tuple[str, ...]
    scale: float
    top_k: int
    min_prob: float = 0.0
    min_margin: float = 0.0
    label_min_probs: tuple[float, ...] = ()  # per label (calibrated); () : none


def label_matrix(loaded: LoadedModel, label_set: LabelSet) -> np.ndarray:
    """(K, D) float32: per label, the renormalized mean of its prompt × template embeddings."""
    rows = []
    for label in label_set.labels:
        texts = [template.format(p) for p in label.prompts for template in label_set.templates]
        mean = encode_texts(loaded, texts).mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows).numpy()


def resolve_scale(loaded: LoadedModel, label_set: LabelSet) -> float:
    if label_set.logit_scale != LEARNED:
        return float(label_set.logit_scale)  # checked when the file was read
    learned = float(loaded.model.logit_scale.exp().item())  # type: ignore[operator]
    problem = scale_problem(learned)
    if problem is not None:  # a damaged or unclamped checkpoint: exp() of it overflowed
        raise ModelError(
            f"the learned logit scale of model {loaded.architecture} is {learned!r}: it "
            f"{problem}; set a number as the label set's logit_scale instead"
        )
    return learned


def _spend_the_read_only_warning() -> None:
    """The vectors are read-only views of mapped Arrow memory, which torch only reads.
    torch warns about such arrays once a process (TORCH_WARN_ONCE): spent here, at import,
    on one thread, since catch_warnings swaps process-wide state and is not safe around
    the two scoring threads' calls."""
    read_only = np.frombuffer(b"\0\0", dtype=np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(read_only)


_spend_the_read_only_warning()

# Two batches scored at once on the 2-core machine, each on one torch thread (its
# products release the GIL), while the reader and the Parquet writer run on threads of
# their own: see BENCHMARKS.md for the rates on each CPU.
SCORING_THREADS = 2
SUB_ROWS = 128  # rows per float16 -> float32 copy and product: fits a core's L2 cache
# exp() of an argument below about -88 (where float32 underflows) leaves torch's vector
# kernel for a slow path: 40,960 values at -100 took 1,864 µs against 15 µs at -80 (one
# thread, the development Xeon), and a scale of 100 puts most logits of a row there. So
# shifted logits are clamped here first: exp(-80) = 1.8e-35 changes no probability, and
# a top probability below it is stored as 0 (what float32 gives below about e^-104).
EXP_FLOOR = -80.0


class Scorer:
    """Scores (ids, float16 matrix) chunks with one head (a plain label matrix: text).

    The logits are kept as (labels, rows), one row per label: every step after the
    product (row maxima, softmax sums, the top labels) is then an elementwise pass across
    K contiguous vectors, which numpy runs at SIMD speed, instead of a short reduction per
    image (torch.topk over 10 logits cost 160-215 ns an image, these passes ~40)."""

    def __init__(self, labels: Head | np.ndarray, settings: ScoreSettings, max_rows: int) -> None:
        problem = scale_problem(settings.scale)
        if problem is not None:  # a version recorded before scales were checked
            raise ConfigError(
                f"label set {settings.label_set} (version {settings.version}) has logit_scale "
                f"{settings.scale!r}, which {problem}; set another in the label set (a new version)"
            )
        self.settings, self.max_rows = settings, max_rows
        head = labels if isinstance(labels, Head) else text_head(labels)
        self.head = head
        count, cache = head.count, head.cache
        # an adapter's example vectors go in times beta: the product is then beta·cos,
        # and exp(beta·(cos - 1)) = exp(beta·cos) · e^-beta, the e^-beta folded into the
        # label values (_CacheTerms): one pass over the affinities, not three
        columns = (
            head.weights
            if cache is None
            else np.concatenate([head.weights, cache.beta * cache.keys.astype(np.float64)])
        )
        # a copy, always: never a read-only view of Arrow memory, which torch warns about
        self.columns = torch.from_numpy(np.array(columns, dtype=np.float32, order="C"))
        self.bias = None if head.bias is None else head.bias.astype(np.float32)[:, None]
        self.cache = _CacheTerms.of(head, min(max_rows, SUB_ROWS))
        self.buffer = torch.empty(min(max_rows, SUB_ROWS), self.columns.shape[1])
        self.logits = torch.empty(count, max_rows)
        self.ranks = _TopLabels(count, min(max(settings.top_k, 2), count), max_rows)
        self.product = product_kernel()
        self.dictionary = pa.array([*settings.label_ids, UNKNOWN], pa.string())
        # per-label thresholds, with a 0 for `unknown`'s index; all 0 without any
        thresholds = settings.label_min_probs or (0.0,) * len(settings.label_ids)
        self.label_min_probs = np.asarray([*thresholds, 0.0], dtype=np.float32)
        self.schema = predictions_schema(settings.top_k)

    def twin(self) -> Scorer:
        """A scorer of the same head with buffers of its own (for another thread)."""
        return Scorer(self.head, self.settings, self.max_rows)

    def score(self, ids: np.ndarray, vectors: np.ndarray) -> pa.RecordBatch:
        logits = self.logits[:, : len(ids)]
        self._cosines(vectors, logits)
        # a non-finite embedding makes NaN logits: abstained in _batch, never warned about
        with np.errstate(invalid="ignore", over="ignore"):
            top_probs, top_index = self.ranks.probabilities(logits.numpy(), self.settings.scale)
        return self._batch(ids, top_probs, top_index)

    def _cosines(self, vectors: np.ndarray, out: torch.Tensor) -> None:
        """labels @ vectors.T in float32, SUB_ROWS rows at a time: each float16 ->
        float32 copy is still in the core's L2 cache when the product reads it (copy +
        product: 2.07M rows/s at 128 rows against 1.28M/s for a whole 4096-row batch,
        1024-d, K = 10, one thread, the development Xeon)."""
        source = torch.from_numpy(vectors)  # read-only Arrow memory: see the import
        for start in range(0, len(vectors), SUB_ROWS):
            stop = min(len(vectors), start + SUB_ROWS)
            chunk = self.buffer[: stop - start]
            chunk.copy_(source[start:stop])
            if self.cache is None:
                self.product(self.columns, chunk.T, out[:, start:stop])
            else:
                self.cache.scores(chunk, self.columns, out[:, start:stop], self.product)
        if self.bias is not None:
            np.add(out.numpy(), self.bias, out=out.numpy())

    def _batch(
        self, ids: np.ndarray, top_probs: np.ndarray, top_index: np.ndarray
    ) -> pa.RecordBatch:
        """The predictions of (count, rows) top probabilities and label indices."""
        k = self.settings.top_k
        best = top_probs[0]
        margin = best - top_probs[1] if len(top_probs) > 1 else best  # one label: all of it
        abstained = (best < self.settings.min_prob) | (margin < self.settings.min_margin)
        abstained |= best < self.label_min_probs[top_index[0]]
        abstained |= ~np.isfinite(best)  # NaN compares false with both thresholds: no answer
        label_index = np.where(abstained, len(self.settings.label_ids), top_index[0])
        constant = pa.array(np.zeros(len(ids), dtype=np.int32))
        columns = [
            pa.array(ids, pa.int64()),
            pa.DictionaryArray.from_arrays(constant, pa.array([self.settings.label_set])),
            pa.DictionaryArray.from_arrays(constant, pa.array([self.settings.version])),
            pa.DictionaryArray.from_arrays(pa.array(label_index, pa.int32()), self.dictionary),
            pa.array(best, pa.float32()),
            pa.array(margin, pa.float32()),
            pa.array(abstained, pa.bool_()),
            _fixed_list(
                pa.DictionaryArray.from_arrays(
                    pa.array(np.ascontiguousarray(top_index[:k].T).reshape(-1)), self.dictionary
                ),
                k,
            ),
            _fixed_list(pa.array(np.ascontiguousarray(top_probs[:k].T).reshape(-1)), k),
            pa.array(np.full(len(ids), self.settings.scale, dtype=np.float32)),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


class _TopLabels:
    """The softmax probabilities of each image's ``count`` best labels and their indices,
    from (labels, rows) logits, with buffers allocated once.

    The k-th best of a column is its maximum; its index is found without an argmax
    (numpy's across rows ran at 66 ns an image): the labels equal to the maximum are
    weighted K, K-1, ..., 1 by position and the largest weight read off, so a tie goes to
    the first label, as topk would; that label is then set to -inf for the next pass."""

    def __init__(self, labels: int, count: int, max_rows: int) -> None:
        self.labels, self.count = labels, count
        self.weights = np.arange(labels, 0, -1, dtype=np.float32)[:, None]  # K .. 1
        self.work = np.empty((labels, max_rows), dtype=np.float32)
        self.equal = np.empty((labels, max_rows), dtype=bool)
        self.top = np.empty((count, max_rows), dtype=np.float32)
        self.rank = np.empty((count, max_rows), dtype=np.float32)
        self.normaliser = np.empty(max_rows, dtype=np.float32)

    def probabilities(self, logits: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """(count, rows) probabilities and int32 label indices; ``logits`` is spent.

        softmax(s·x) of the top labels only: exp(s·(x_top - max)) / Σ exp(s·(x - max)),
        shifted before it is scaled (a logit of unit vectors lies in [-2s, 0], where s·x
        itself may overflow float32), and clamped at EXP_FLOOR."""
        rows = logits.shape[1]
        top, rank = self.top[:, :rows], self.rank[:, :rows]
        np.max(logits, axis=0, out=top[0])
        shifted = np.subtract(logits, top[0], out=self.work[:, :rows])
        _scaled_exp(shifted, scale)
        normaliser = np.sum(shifted, axis=0, out=self.normaliser[:rows])
        for place in range(self.count):
            self._take_best(logits, place, top, rank)
        np.subtract(top, top[0], out=top)
        np.multiply(top, scale, out=top)
        negligible = top <= EXP_FLOOR  # stored as 0, as exp of them is in float32
        np.exp(np.maximum(top, EXP_FLOOR, out=top), out=top)
        top[negligible] = 0.0
        # new arrays, not views of the buffers: the Arrow batch made of them is written
        # on another thread while this scorer fills its buffers again
        return top / normaliser, (self.labels - rank).astype(np.int32)

    def _take_best(self, logits: np.ndarray, place: int, top: np.ndarray, rank: np.ndarray) -> None:
        rows = logits.shape[1]
        equal, weighted = self.equal[:, :rows], self.work[:, :rows]
        if place:
            np.max(logits, axis=0, out=top[place])
        np.equal(logits, top[place], out=equal)
        np.multiply(equal, self.weights, out=weighted)
        np.max(weighted, axis=0, out=rank[place])
        if place + 1 < self.count:
            np.equal(self.weights, rank[place], out=equal)
            np.copyto(logits, -np.inf, where=equal)


def _scaled_exp(shifted: np.ndarray, scale: float) -> None:
    """exp(scale · shifted) in place, the argument clamped at EXP_FLOOR first."""
    np.multiply(shifted, scale, out=shifted)
    np.maximum(shifted, EXP_FLOOR, out=shifted)
    np.exp(shifted, out=shifted)


Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
PRODUCT_ENV = "METER_BATCH_PRODUCT"


def _torch_product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    torch.mm(a, b, out=out)


def _numpy_product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    np.matmul(a.numpy(), b.numpy(), out=out.numpy())  # the same memory, through numpy's BLAS


PRODUCTS: dict[str, Product] = {"torch": _torch_product, "numpy": _numpy_product}


def product_kernel_name() -> str:
    """Which BLAS multiplies, by CPU vendor: torch's (MKL) on Intel, numpy's (OpenBLAS)
    on AMD, where MKL is slow. One thread, 1024-d, K = 10, copy + product: torch 2.22M
    rows/s against numpy 1.46M/s on the development Xeon; the issue measured torch 0.66M/s
    against numpy 1.87M/s (product alone) on a Zen 4 EPYC. METER_BATCH_PRODUCT=torch or
    numpy overrides; `bench classify` times both on the machine it runs on."""
    chosen = os.environ.get(PRODUCT_ENV, "")
    if chosen:
        if chosen not in PRODUCTS:
            raise ConfigError(f"{PRODUCT_ENV} must be one of {', '.join(PRODUCTS)}; got {chosen!r}")
        return chosen
    return "numpy" if cpu_vendor() == "AuthenticAMD" else "torch"


def product_kernel() -> Product:
    return PRODUCTS[product_kernel_name()]


def cpu_vendor() -> str:
    """The x86 vendor id (GenuineIntel, AuthenticAMD), or "" where /proc/cpuinfo has none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@dataclass(frozen=True)
class _CacheTerms:
    """An adapter's affinity term, in float32: the text cosines and beta times the
    example ones from one product, exp of the latter in place (beta·cos <= beta <= 12:
    no overflow), and one product with the labels' values (alpha·e^-beta where the
    example's label is the row's) added to the text ones. The affinity's three passes
    (subtract, scale, exp) cost 566 ns a row against the product's 2,434 at 160
    examples, 1024-d, one thread, the development Xeon."""

    count: int  # labels
    values: torch.Tensor  # (K, N) float32
    wide: torch.Tensor  # (K + N, SUB_ROWS) buffer

    @classmethod
    def of(cls, head: Head, rows: int) -> _CacheTerms | None:
        if head.cache is None:
            return None
        folded = head.cache.values(head.count).astype(np.float64) * math.exp(-head.cache.beta)
        values = torch.from_numpy(np.ascontiguousarray(folded.T, dtype=np.float32))
        wide = torch.empty(head.count + len(head.cache.labels), rows)
        return cls(head.count, values, wide)

    def scores(
        self, chunk: torch.Tensor, columns: torch.Tensor, out: torch.Tensor, product: Product
    ) -> None:
        wide = self.wide[:, : len(chunk)]
        product(columns, chunk.T, wide)
        affinity = wide[self.count :]
        affinity.exp_()
        torch.addmm(wide[: self.count], self.values, affinity, out=out)


def _fixed_list(values: pa.Array, size: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(values, size)


def score_files(
    files: Iterable[Path],
    scorer: Scorer,
    min_image_id: int = 0,
    skip_ids: set[int] | None = None,
    threads: int = SCORING_THREADS,
) -> Iterator[pa.RecordBatch]:
    """Predictions for every stored image with ``image_id >= min_image_id``, in store
    order. Batches are scored on ``threads`` threads at once, each with its own scorer
    and one torch thread: the products release the GIL, so reading, scoring and the
    Parquet writer's thread share both cores (see SCORING_THREADS)."""
    scorers = [scorer, *(scorer.twin() for _ in range(threads - 1))]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(len(scorers), thread_name_prefix="scoring")
    batches = prefetch(_selected(files, min_image_id, skip_ids or set()))
    pending: deque[Future[pa.RecordBatch]] = deque()
    # numpy's BLAS too: its own pool per call would oversubscribe the shared cores
    limits = threadpool_limits(1, user_api="blas")
    try:
        for number, (ids, vectors) in enumerate(batches):
            # a scorer's buffers are free again: its last batch was taken below
            pending.append(pool.submit(scorers[number % len(scorers)].score, ids, vectors))
            if len(pending) == len(scorers):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # an error or an early stop: no more reading, no batch left waiting
        batches.close()
        pool.shutdown(wait=True, cancel_futures=True)
        limits.restore_original_limits()
        torch.set_num_threads(previous)


def _selected(
    files: Iterable[Path], min_image_id: int, skip_ids: set[int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The stored (ids, vectors) batches still to score: ids grow with every run, so
    whole old batches are passed over; deleted or superseded rows are left out."""
    skip = np.fromiter(skip_ids, dtype=np.int64, count=len(skip_ids))
    for ids, vectors in _batches(files):
        if ids[-1] < min_image_id:
            continue
        keep = ids >= min_image_id
        if len(skip):
            keep &= ~np.isin(ids, skip)
        if not keep.all():
            if not keep.any():
                continue
            ids, vectors = ids[keep], vectors[keep]
        yield ids, vectors


def _batches(files: Iterable[Path]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for path in files:
        yield from iter_vectors(path)
