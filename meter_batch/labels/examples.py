"""A few-shot label set's example images -> labelled vectors, from the store where it can.

Each example (a label's `examples`, a row of the set's `examples_file`) is a live path of
the store, used as stored; or else a file (relative to the file that lists it), known by
the hash of its bytes. Its vector then comes from a stored image with the same bytes,
from an earlier version's examples file, or only failing both, from decoding and encoding
it with the store's model: an example outside the store is encoded once in the store's
life. These are the only images a label set ever decodes.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from meter_batch.errors import ConfigError, InputError
from meter_batch.labels.few_shot import Examples, describe, fit_head
from meter_batch.labels.head import Head
from meter_batch.labels.label_sets import LabelSet, normal_text
from meter_batch.labels.predictions import StoredExamples, read_example_vectors, read_examples
from meter_batch.model.encoder import ImageEncoder, plan_device
from meter_batch.model.loading import LoadedModel
from meter_batch.store.commit import Store
from meter_batch.store.read import live_ids_with, live_refs_of, vectors_of
from meter_batch.store.records import FewShotFit
from meter_batch.store.schema import content_hash

if TYPE_CHECKING:
    from meter_batch.ingest.decode import Decoded, DecodeOptions

log = logging.getLogger("meter_batch")
MIN_EXAMPLES = 2  # cross-validation needs a fold to fit on and one to judge
ENCODE_BATCH = 32


@dataclass(frozen=True)
class Example:
    """One example, located: a stored image (``image_id``) or a file outside the store."""

    label: int
    ref: str  # as written
    content_hash: bytes
    image_id: int | None
    file: Path | None


@dataclass(frozen=True)
class LocatedExamples:
    items: tuple[Example, ...]

    def fingerprint(self) -> tuple[str, ...]:
        """What a version hashes of its examples: which bytes teach which label."""
        return tuple(sorted(f"{e.label}:{e.content_hash.hex()}" for e in self.items))

    def stored_ids(self) -> set[int]:
        return {e.image_id for e in self.items if e.image_id is not None}


def example_version(store: Store, label_set: LabelSet) -> tuple[str, LocatedExamples | None]:
    """The set's version in this store; for a few-shot set, its examples located too."""
    if not label_set.few_shot:
        return label_set.version(store.identity), None
    located = locate_examples(store, label_set)
    return label_set.version(store.identity, located.fingerprint()), located


def example_image_ids(store: Store, located: LocatedExamples) -> frozenset[int]:
    """The live images that are examples: named by path, or holding an example's bytes
    (every copy of them)."""
    hashes = sorted({e.content_hash for e in located.items})
    return frozenset(located.stored_ids() | live_ids_with(store, "content_hash", hashes))


def locate_examples(store: Store, label_set: LabelSet) -> LocatedExamples:
    refs = _refs(label_set)
    stored = live_refs_of(store, "path", [written for _, written, _ in refs])
    found: dict[bytes, Example] = {}
    for label, written, folder in refs:
        ref = stored.get(written)
        if ref is not None:
            example = Example(label, written, ref.content_hash, ref.image_id, None)
        else:
            file = _file(store, label_set, label, written, folder)
            example = Example(label, written, content_hash(_read(file)), None, file)
        _add_once(found, example, label_set)
    if len(found) < MIN_EXAMPLES:
        raise ConfigError(
            f"label set {label_set.name!r} (mode {label_set.mode!r}) has {len(found)} "
            f"distinct example image(s); it needs at least {MIN_EXAMPLES}"
        )
    # in the order of what the version hashes, not of the rows: the folds, and so the
    # fitted head, are then the same for every listing of the same images
    ordered = sorted(found.values(), key=lambda e: (e.label, e.content_hash))
    return LocatedExamples(tuple(ordered))


def _refs(label_set: LabelSet) -> list[tuple[int, str, Path]]:
    """(label index, path as written, folder it is relative to) of every example."""
    folder = Path(label_set.folder or ".")
    refs = [(i, p, folder) for i, label in enumerate(label_set.labels) for p in label.examples]
    if label_set.examples_file is not None:
        csv_path = folder / label_set.examples_file
        refs += [(i, p, csv_path.parent) for i, p in read_examples_file(csv_path, label_set)]
    return refs


def read_examples_file(path: Path, label_set: LabelSet) -> list[tuple[int, str]]:
    """(label index, path) rows of an examples file: CSV with `path` and `label` columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"examples file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read examples file {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    try:
        return _example_rows(path, reader, label_set)
    except csv.Error as exc:
        raise ConfigError(f"examples file {path}, line {reader.line_num}: {exc}") from exc


def _example_rows(
    path: Path, reader: csv.DictReader[str], label_set: LabelSet
) -> list[tuple[int, str]]:
    if not {"path", "label"} <= set(reader.fieldnames or ()):
        found = ", ".join(reader.fieldnames or ()) or "none"
        raise ConfigError(f"examples file {path} needs columns path,label; its columns: {found}")
    index = {label_id: i for i, label_id in enumerate(label_set.label_ids)}
    rows = []
    for row in reader:
        where = f"examples file {path}, line {reader.line_num}"
        label, image = normal_text(row["label"] or ""), (row["path"] or "").strip()
        if not image or "\0" in image:
            raise ConfigError(f"{where}: the path is empty or holds a NUL byte")
        if label not in index:
            valid = ", ".join(label_set.label_ids)
            raise ConfigError(f"{where}: label {label!r} is not in the set; its ids: {valid}")
        rows.append((index[label], image))
    return rows


def _file(store: Store, label_set: LabelSet, label: int, written: str, folder: Path) -> Path:
    if "\0" in written:
        raise ConfigError(
            f"example {written!r} of label {label_set.label_ids[label]!r}: a NUL byte"
        )
    file = Path(written) if Path(written).is_absolute() else folder / written
    if not file.is_file():
        raise ConfigError(
            f"example {written!r} of label {label_set.label_ids[label]!r} is neither a live "
            f"image of store {store.root} (paths as stored, with the prefix) nor a file "
            f"({file} not found)"
        )
    return file


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read example {file}: {exc.strerror or exc}") from exc


def _add_once(found: dict[bytes, Example], example: Example, label_set: LabelSet) -> None:
    """The same bytes twice: kept once for one label, an error for two."""
    earlier = found.setdefault(example.content_hash, example)
    if earlier.label != example.label:
        ids = label_set.label_ids
        raise ConfigError(
            f"example {example.ref!r} ({ids[example.label]!r}) is the same image as "
            f"{earlier.ref!r} ({ids[earlier.label]!r}): one image cannot teach two labels"
        )


class ExampleCache:
    """Example vectors by content hash: what the store knows (stored images, earlier
    versions' examples files, earlier commands' example parts) and what this command
    encoded, which its commit keeps (``fresh``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fresh: dict[bytes, tuple[str, np.ndarray]] = {}  # hash -> (ref, float16)
        # what the store's images gave, by hash (None: no stored image has those bytes):
        # the sets of one command share examples, and each lookup reads every part
        self._stored: dict[bytes, np.ndarray | None] = {}

    def known(self, located: LocatedExamples) -> dict[bytes, np.ndarray]:
        hashes = {e.content_hash for e in located.items}
        todo = [e for e in located.items if e.content_hash not in self._stored]
        if todo:
            found = _stored_vectors(self.store, LocatedExamples(tuple(todo)))
            self._stored |= {e.content_hash: found.get(e.content_hash) for e in todo}
        known = {h: v for h in hashes if (v := self._stored[h]) is not None}
        known |= {h: v for h, (_, v) in self.fresh.items() if h in hashes}
        for path in self._earlier_files():
            if hashes <= set(known):
                break
            for h, vector in _vectors_in(path).items():
                if h in hashes:
                    known.setdefault(h, vector)
        return known

    def _earlier_files(self) -> list[Path]:
        manifest = self.store.manifest
        relpaths = [e.examples for e in manifest.label_sets if e.examples is not None]
        return [self.store.checked(p) for p in [*relpaths, *manifest.example_parts]]


def _vectors_in(path: Path) -> dict[bytes, np.ndarray]:
    if path.name.startswith("examples-"):  # an example part; else a version's examples
        return read_example_vectors(path)
    earlier = read_examples(path)
    return dict(zip(earlier.content_hashes, earlier.vectors, strict=True))


def _stored_vectors(store: Store, located: LocatedExamples) -> dict[bytes, np.ndarray]:
    """Vectors of the live images named by path or holding an example's bytes."""
    hashes = sorted({e.content_hash for e in located.items})
    wanted = {
        ref.content_hash: ref.image_id
        for ref in live_refs_of(store, "content_hash", hashes).values()
    }
    wanted |= {e.content_hash: e.image_id for e in located.items if e.image_id is not None}
    ids, vectors = vectors_of(store, sorted(set(wanted.values())))
    row_of = {int(image_id): row for row, image_id in enumerate(ids)}
    return {h: vectors[row_of[i]].astype(np.float16) for h, i in wanted.items() if i in row_of}


@dataclass(frozen=True)
class ExampleVectors:
    examples: StoredExamples
    encoded: int  # files outside the store decoded and encoded for this call


def example_vectors(
    cache: ExampleCache, located: LocatedExamples, load_model: Callable[[], LoadedModel]
) -> ExampleVectors:
    """Every example's vector: stored, known from earlier, or (only then) encoded now."""
    known = cache.known(located)
    todo = [e for e in located.items if e.content_hash not in known]
    if todo:
        files = [e.file for e in todo if e.file is not None]  # a stored one is always known
        log.info("encoding %d example image(s) that are not in the store (once)", len(files))
        vectors = encode_files(load_model(), files)
        for example, vector in zip(todo, vectors, strict=True):
            known[example.content_hash] = vector
            cache.fresh[example.content_hash] = (example.ref, vector)
    items = located.items
    stored = StoredExamples(
        vectors=np.stack([known[e.content_hash] for e in items]).astype(np.float16),
        labels=np.asarray([e.label for e in items], dtype=np.int64),
        content_hashes=tuple(e.content_hash for e in items),
        image_ids=tuple(e.image_id for e in items),
        refs=tuple(e.ref for e in items),
    )
    return ExampleVectors(stored, len(todo))


def encode_files(loaded: LoadedModel, files: list[Path], role: str = "example") -> list[np.ndarray]:
    """(D,) float16 unit vectors of image files, decoded and preprocessed as `encode`
    does (open_clip's own eval transform), on the CPU. ``role`` names them in errors."""
    from meter_batch.ingest.decode import decode_file

    encoder, options = _cpu_encoder(loaded)
    vectors: list[np.ndarray] = []
    for start in range(0, len(files), ENCODE_BATCH):
        chunk = files[start : start + ENCODE_BATCH]
        decoded = [(f, decode_file(bytes(f.resolve()), 0, options)) for f in chunk]
        pixels = [_pixels(d, str(f), role) for f, d in decoded]
        vectors.extend(encoder(torch.from_numpy(np.stack(pixels))))
    return vectors


def encode_image_data(loaded: LoadedModel, data: bytes, role: str) -> np.ndarray:
    """One image's (D,) float16 unit vector from its bytes (an upload), as encode_files."""
    from meter_batch.ingest.decode import Decoded, decode_into_result

    encoder, options = _cpu_encoder(loaded)
    decoded = Decoded(0)
    decode_into_result(decoded, data, options)
    pixels = _pixels(decoded, "the image sent", role)
    return np.asarray(encoder(torch.from_numpy(pixels[None]))[0])


def _cpu_encoder(loaded: LoadedModel) -> tuple[ImageEncoder, DecodeOptions]:
    # here, not at the top: scoring and classify load no image decoder unless an example
    # outside the store (or a search by image) needs one
    from meter_batch.ingest.decode import DecodeOptions, configure_decoder_process, split_preprocess

    stage = split_preprocess(loaded.reference_preprocess)
    configure_decoder_process(in_worker=False)
    encoder = ImageEncoder(
        loaded.model, stage.mean, stage.std, plan_device("cpu", "fp32"), name=loaded.architecture
    )
    return encoder, DecodeOptions(stage.transform, 10**9)


def _pixels(decoded: Decoded, what: str, role: str) -> np.ndarray:
    if decoded.kind is not None or decoded.pixels is None:
        raise InputError(f"cannot use {what} as {role}: {decoded.kind}: {decoded.message}")
    return decoded.pixels


@dataclass(frozen=True)
class FewShotHead:
    """A few-shot version's fitted head, its record, and the examples it was fitted on."""

    head: Head
    fit: FewShotFit
    examples: StoredExamples


def few_shot_head(
    cache: ExampleCache,
    label_set: LabelSet,
    located: LocatedExamples,
    text: np.ndarray,
    scale: float,
    load_model: Callable[[], LoadedModel],
) -> FewShotHead:
    """The examples' vectors, then the head of the set's mode fitted to them."""
    found = example_vectors(cache, located, load_model)
    vectors = found.examples.vectors.astype(np.float32)
    fitted = fit_head(label_set.mode, text, Examples(vectors, found.examples.labels), scale)
    fit = replace(fitted.fit, encoded=found.encoded)
    log.info("few-shot %s", describe(fit))
    return FewShotHead(fitted.head, fit, found.examples)
