"""The records that cross module boundaries, and what the manifest holds.

A failure (FailureKind, FailureRecord), a tombstone (Tombstone), an encode run
(RunCounts, RunRecord), a label-set version (LabelSetEntry), and the manifest that
lists them. The Arrow schemas of their tables are built from these classes (schema.py),
so a field is added in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from typing import Any, ClassVar

from meter_batch.store.layout import vectors_file

FORMAT_VERSION = 2  # 2: frames column, pixel policy in the model identity

# A decoder process that crashed or hung is recorded as `decode_error` (the kind users
# query), with a message that starts with this: the one mark, when a failure is read
# back, that tells it from corrupt data, which is not retried.
DECODER_FAULT_PREFIX = "the decoder "


class FailureKind(Enum):
    """Why a file has no embedding. ``stored`` is the `kind` column's text (README's
    table); ``retried``: whether the next run tries the unchanged file again, because
    the outcome depends on the machine (a cap, a decoder, permissions, a calm moment)
    rather than on the file's bytes."""

    UNIDENTIFIED = ("unidentified", False)
    TRUNCATED = ("truncated", False)
    DECODE_ERROR = ("decode_error", False)  # corrupt data
    DECODER_FAULT = ("decode_error", True)  # the decoder process crashed or hung
    TOO_LARGE = ("too_large", True)
    UNSUPPORTED_FORMAT = ("unsupported_format", True)
    VANISHED = ("vanished", True)
    UNSTABLE = ("unstable", True)
    PERMISSION_DENIED = ("permission_denied", True)
    UNREADABLE = ("unreadable", True)

    def __init__(self, stored: str, retried: bool) -> None:
        self.stored = stored
        self.retried = retried

    def __str__(self) -> str:
        return self.stored

    @classmethod
    def of_stored(cls, kind: str, message: str) -> FailureKind | None:
        """The kind of a failure row read back from the store; None for a kind this
        version does not know (a newer one wrote it), which is retried."""
        if kind == cls.DECODE_ERROR.stored and message.startswith(DECODER_FAULT_PREFIX):
            return cls.DECODER_FAULT
        return next((k for k in cls if k.stored == kind and k is not cls.DECODER_FAULT), None)


def decoder_fault(what: str) -> str:
    """The message of a DECODER_FAULT: 'the decoder ' + what happened to it."""
    return DECODER_FAULT_PREFIX + what


@dataclass(frozen=True)
class FailureRecord:
    """A file that has no embedding, as a failures part stores it."""

    relpath: bytes  # as stored: with the run's path prefix
    kind: FailureKind
    message: str
    size: int | None = None  # None: a folder that could not be listed
    mtime_ns: int | None = None


class TombstoneReason(StrEnum):
    DELETED = "deleted"  # the file is gone (or, with no image_id, its standing failure)
    SUPERSEDED = "superseded"  # a newer row of the same path replaces this one
    RESOLVED = "resolved"  # a standing failure is over (its folder reads again)


@dataclass(frozen=True)
class Tombstone:
    """Ends an image row, or with ``image_id`` None, a standing failure of ``relpath``."""

    relpath: bytes
    image_id: int | None
    reason: TombstoneReason


def ordered_fields(cls: type) -> list[str]:
    """A record's field names, its ``FIRST`` ones first (the order its table shows)."""
    first: tuple[str, ...] = getattr(cls, "FIRST", ())
    names = [f.name for f in dataclasses.fields(cls)]
    return [*first, *(n for n in names if n not in first)]


def _without_none(record: Any) -> dict[str, Any]:
    """asdict in ``ordered_fields`` order, leaving out optional fields that are not set:
    a record read from an older manifest is written back with the keys it had."""
    data = asdict(record)
    return {k: data[k] for k in ordered_fields(type(record)) if data[k] is not None}


@dataclass(frozen=True)
class RunCounts:
    """What one encode run did with the files it saw."""

    scanned: int
    encoded: int
    failed: int
    skipped: int
    touched: int
    superseded: int
    deleted: int


def counts_of(counts: RunCounts) -> dict[str, Any]:
    """The RunCounts fields of a record that has them (a RunSummary), to build another."""
    return {f.name: getattr(counts, f.name) for f in dataclasses.fields(RunCounts)}


@dataclass(frozen=True, kw_only=True)
class RunRecord(RunCounts):
    """One encode run as the manifest keeps it; the catalog's `runs` table shows it."""

    FIRST: ClassVar[tuple[str, ...]] = ("run_id", "finished_at", "images_dir")
    run_id: str
    finished_at: str  # ISO 8601, UTC
    images_dir: str | None = None
    path_prefix: str = ""
    seconds: float | None = None
    device: str | None = None
    precision: str | None = None
    preprocess_path: str | None = None  # exact | fast
    jpeg_decode: str | None = None  # device | workers; None in runs older than the GPU decoder
    compile: bool | None = None  # None in runs older than --compile
    meter_batch_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls(**data)


@dataclass(frozen=True)
class FewShotFit:
    """How a few-shot label-set version was fitted: the hyper-parameters chosen by
    cross-validation on its examples (those of its mode; the others None), and the
    held-out accuracy on the examples against the text alone."""

    mode: str  # prototype | adapter | probe
    examples: int
    cv_folds: int
    cv_accuracy: float
    cv_text_accuracy: float
    encoded: int = 0  # example files outside the store encoded for this version
    mix: float | None = None  # prototype: weight of the example mean
    alpha: float | None = None  # adapter: Tip-Adapter's α (with logits scale · cosine)
    beta: float | None = None  # adapter: sharpness of the affinity
    l2: float | None = None  # probe: pull back to the text weights (logit units)


@dataclass(frozen=True)
class LabelSetEntry:
    """One label-set version in the manifest: its settings, matrix and prediction parts.
    The catalog's `label_sets` table shows every field but ``matrix`` and ``parts``."""

    name: str
    version: str
    created_at: str  # ISO 8601, UTC
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    logit_scale: float
    logit_scale_setting: float | str  # as the file said: a number or "learned"
    top_k: int
    min_prob: float
    min_margin: float
    matrix: str  # the label matrix file
    parts: tuple[str, ...] = ()
    scored_below_id: int = 0  # every image below this id is scored
    classified_at: str | None = None
    label_min_probs: tuple[float, ...] | None = None  # per label; None: no label has one
    mode: str | None = None  # a few-shot mode; None: text
    examples: str | None = None  # the examples file (vectors, labels, content hashes)
    few_shot: FewShotFit | None = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelSetEntry:
        lists: dict[str, Any] = {
            k: tuple(data[k])
            for k in ("labels", "templates", "parts", "label_min_probs")
            if data.get(k) is not None
        }
        if data.get("few_shot") is not None:
            lists["few_shot"] = FewShotFit(**data["few_shot"])
        return cls(**{**data, **lists})


class CurrentHow(StrEnum):
    """Why a version is its name's current one (what `latest_predictions` shows)."""

    APPLIED = "applied"  # the nightly job (or `classify --make-current`) applied it
    PINNED = "pinned"  # a person pinned it: the job applies its own but shows this one
    FIRST = "first"  # the first version of the name ever classified
    LATEST = "latest"  # a store from before current versions: the newest classified


@dataclass(frozen=True)
class CurrentVersion:
    """The version of a label-set name that `latest_predictions` shows."""

    name: str
    version: str
    how: str  # a CurrentHow
    since: str  # ISO 8601, UTC
    applied: str | None = None  # the version the job applied last (kept while pinned)


@dataclass(frozen=True, kw_only=True)
class EvaluationRecord:
    """One `evaluate` of a label-set version against a truth file; the catalog's
    `evaluations` table shows it, so a set's quality can be followed over time. Figures
    that have no value (no image kept by the abstain rule) are None."""

    FIRST: ClassVar[tuple[str, ...]] = ("label_set", "version", "evaluated_at")
    label_set: str
    version: str
    evaluated_at: str  # ISO 8601, UTC
    truth_file: str
    truth_sha256: str
    truth_rows: int
    images: int  # truth rows found among the store's live images, and scored
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    balanced_accuracy: float
    balanced_accuracy_low: float
    balanced_accuracy_high: float
    ece: float
    nll: float
    brier: float
    accuracy_at_90: float  # on the 90 % most confident
    accuracy_at_80: float
    accuracy_at_50: float
    abstained: float
    kept_accuracy: float | None
    details: str  # JSON: per-class precision / recall / F1 / support and the confusion
    # truth images left out, the set's own few-shot examples; None for a set without any
    # (so that a store evaluated only with text sets stays readable by older releases)
    examples_left_out: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationRecord:
        return cls(**data)


@dataclass(frozen=True)
class FileSum:
    """A committed file's size and SHA-256 digest (hex), as its commit wrote it: readers
    compare the size before use, `verify` the digest."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """One committed state of the store: the files that are live, the runs, the label sets."""

    seq: int = 0
    next_image_id: int = 0
    embedding_parts: tuple[str, ...] = ()
    failure_parts: tuple[str, ...] = ()
    tombstone_parts: tuple[str, ...] = ()
    index: str | None = None
    index_current: bool = True  # False between a run's intermediate commits and its last
    path_prefixes: tuple[str, ...] = ()  # every prefix any commit used ("" = unprefixed)
    runs: tuple[RunRecord, ...] = ()
    label_sets: tuple[LabelSetEntry, ...] = field(default=())
    # every live file's size and digest; a file committed before checksums has none
    files: dict[str, FileSum] = field(default_factory=dict)
    evaluations: tuple[EvaluationRecord, ...] = ()
    current: tuple[CurrentVersion, ...] = ()  # per label-set name; see CurrentHow
    # vectors of example files outside the store that evaluate / calibrate encoded (a
    # classified few-shot version keeps its own in its examples file)
    example_parts: tuple[str, ...] = ()
    # thumbnails `report` (or `encode --thumbnails`) made, keyed by the image's bytes
    thumbnail_parts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["runs"] = [run.to_json() for run in self.runs]
        data["label_sets"] = [entry.to_json() for entry in self.label_sets]
        data["files"] = {relpath: asdict(s) for relpath, s in sorted(self.files.items())}
        data["evaluations"] = [e.to_json() for e in self.evaluations]
        data["current"] = [_without_none(c) for c in self.current]
        for key in ("files", "evaluations", "current", "example_parts", "thumbnail_parts"):
            if not data[key]:
                del data[key]  # a manifest from before them is written back as it was
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        data = {k: v for k, v in data.items() if k != "format_version"}
        parts = (
            "embedding_parts",
            "failure_parts",
            "tombstone_parts",
            "example_parts",
            "thumbnail_parts",
        )
        for key in (*parts, "path_prefixes"):
            data[key] = tuple(data.get(key, ()))
        data["runs"] = tuple(RunRecord.from_json(r) for r in data.get("runs", ()))
        data["label_sets"] = tuple(LabelSetEntry.from_json(e) for e in data.get("label_sets", ()))
        data["files"] = {k: FileSum(**v) for k, v in data.get("files", {}).items()}
        data["evaluations"] = tuple(
            EvaluationRecord.from_json(e) for e in data.get("evaluations", ())
        )
        data["current"] = tuple(CurrentVersion(**c) for c in data.get("current", ()))
        return cls(**data)

    def live_files(self) -> set[str]:
        """Every file this manifest makes live (relative paths)."""
        live = {*self.embedding_parts, *self.failure_parts, *self.tombstone_parts}
        live |= {vectors_file(p) for p in self.embedding_parts}
        live |= {self.index} if self.index else set()
        live |= {*self.example_parts, *self.thumbnail_parts}
        for entry in self.label_sets:
            live |= {*entry.parts, entry.matrix}
            live |= {entry.examples} if entry.examples else set()
        return live

    def label_set(self, version: str) -> LabelSetEntry | None:
        return next((e for e in self.label_sets if e.version == version), None)

    def current_of(self, name: str) -> CurrentVersion | None:
        """The name's current version: as recorded, or for a store from before current
        versions, the version of that name classified last."""
        recorded = next((c for c in self.current if c.name == name), None)
        if recorded is not None:
            return recorded
        entries = [e for e in self.label_sets if e.name == name]
        if not entries:
            return None
        latest = max(entries, key=lambda e: e.classified_at or e.created_at)
        since = latest.classified_at or latest.created_at
        return CurrentVersion(name, latest.version, CurrentHow.LATEST, since, latest.version)

    def names(self) -> list[str]:
        return sorted({e.name for e in self.label_sets})
