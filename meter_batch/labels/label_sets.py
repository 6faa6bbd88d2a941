"""Label-set files -> validated LabelSet -> the label embedding matrix.

A label set is TOML:

    name = "meter-type"
    templates = ["a photo of a {}.", "{}"]   # optional, default ["{}"]
    logit_scale = 100                        # optional: a number, or "learned"
    top_k = 3                                # optional
    mode = "text"                            # optional: text, prototype, adapter, probe
    examples_file = "examples.csv"           # optional: path,label rows (few-shot modes)
    [abstain]                                # optional
    min_prob = 0.5
    min_margin = 0.1
    [[labels]]
    id = "digital_7seg"
    prompts = ["デジタルメーター(7セグ)"]
    min_prob = 0.8                           # optional: this label's own threshold
    examples = ["site-a/2024/0001.jpg"]      # optional: example images (few-shot modes)

Each label's embedding is the mean of its normalized prompt × template text
embeddings, renormalized — what open_clip's `build_zero_shot_classifier` does.

An example is a path as stored (with the store's prefix) or else an image file, relative
to the file that lists it; `examples.py` resolves them against a store. Few-shot modes
(`few_shot.py`) fit a head to them. The examples enter a version as their content hashes
(see `version`), not as paths: the same images under another name are the same version.

Text is Unicode-normalised (NFC) and ids, prompts and the name are stripped, as open_clip's
tokenizer (ftfy, whitespace_clean) sees it: "é" typed as one or two code points, or "a "
for "a", is the same label. Already-normal text is unchanged, and so is its version.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meter_batch.config import read_toml
from meter_batch.errors import ConfigError
from meter_batch.model.identity import ModelIdentity

LEARNED = "learned"
UNKNOWN = "unknown"
DEFAULT_SCALE = 100.0
# CLIP's learned scale is clamped to 100 in training; at 1000 a cosine gap of 0.01 is
# already e^10 in odds. Larger is no sharper, only closer to overflowing float32.
MAX_LOGIT_SCALE = 1000.0
TEXT_MODE = "text"
MODES = (TEXT_MODE, "prototype", "adapter", "probe")
_TOP_KEYS = (
    "name",
    "templates",
    "logit_scale",
    "top_k",
    "mode",
    "examples_file",
    "abstain",
    "labels",
)
_LABEL_KEYS = ("id", "prompts", "min_prob", "examples")
_ABSTAIN_KEYS = ("min_prob", "min_margin")


@dataclass(frozen=True)
class Label:
    id: str
    prompts: tuple[str, ...]
    # this label's own abstain threshold (`calibrate --target-precision` fits it): a top-1
    # answer of this label below it is `unknown`; None: the set's [abstain] min_prob only
    min_prob: float | None = None
    examples: tuple[str, ...] = ()  # as written: stored paths or files (see ExampleRefs)


@dataclass(frozen=True)
class Abstain:
    """A top-1 answer below ``min_prob``, or ahead of the runner-up by less than
    ``min_margin``, becomes ``unknown``."""

    min_prob: float = 0.0
    min_margin: float = 0.0


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[Label, ...]
    templates: tuple[str, ...] = ("{}",)
    logit_scale: float | str = DEFAULT_SCALE
    top_k: int = 3
    abstain: Abstain = field(default_factory=Abstain)
    mode: str = TEXT_MODE
    examples_file: str | None = None  # as written; relative to ``folder``
    # where relative example files are looked for: the label-set file's folder (not part
    # of the version: the same file moved elsewhere is the same label set)
    folder: str = field(default="", compare=False)

    @property
    def few_shot(self) -> bool:
        return self.mode != TEXT_MODE

    @property
    def label_ids(self) -> list[str]:
        return [label.id for label in self.labels]

    @property
    def label_min_probs(self) -> tuple[float, ...]:
        """Each label's own threshold, 0 where it has none (the set's rule still holds)."""
        return tuple(label.min_prob or 0.0 for label in self.labels)

    def canonical(self) -> dict[str, Any]:
        """The settings a version hashes. What a text-mode set without per-label
        thresholds did not have is left out, so that its version stays what it was; the
        examples enter as content hashes (``version``), not as the paths written."""
        data = asdict(self)
        for key in ("examples_file", "folder"):
            del data[key]
        if data["mode"] == TEXT_MODE:
            del data["mode"]
        for label in data["labels"]:
            del label["examples"]
            if label["min_prob"] is None:
                del label["min_prob"]
        return data

    def version(self, model: ModelIdentity, examples: tuple[str, ...] = ()) -> str:
        """A hash of the normalized content, the model and (few-shot) the examples'
        ``label:content-hash`` fingerprint: same file and images -> same version."""
        content: dict[str, Any] = {"labels": self.canonical(), "model": model.to_json()}
        if examples:
            content["examples"] = list(examples)
        payload = json.dumps(content, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def load_label_set(path: Path) -> LabelSet:
    data = read_toml(path)
    try:
        return parse_label_set(data, folder=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse_label_set(data: Mapping[str, Any], folder: Path | None = None) -> LabelSet:
    _reject_unknown(data, _TOP_KEYS, "label set")
    name = data.get("name")
    if not isinstance(name, str) or not normal_text(name):
        raise ConfigError("'name' must be a non-empty string")
    labels = _parse_labels(data.get("labels"))
    templates = _parse_templates(data.get("templates", ["{}"]))
    top_k = data.get("top_k", 3)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1; got {top_k!r}")
    mode, examples_file = _parse_few_shot(data, labels)
    return LabelSet(
        name=normal_text(name),
        labels=labels,
        templates=templates,
        logit_scale=_parse_scale(data.get("logit_scale", DEFAULT_SCALE)),
        top_k=min(top_k, len(labels)),
        abstain=_parse_abstain(data.get("abstain", {})),
        mode=mode,
        examples_file=examples_file,
        folder=str(folder) if folder is not None else "",
    )


def _parse_few_shot(data: Mapping[str, Any], labels: tuple[Label, ...]) -> tuple[str, str | None]:
    """The mode, and the examples file; a few-shot mode needs examples, and examples a
    few-shot mode (text mode would silently ignore them)."""
    mode = data.get("mode", TEXT_MODE)
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    examples_file = data.get("examples_file")
    if examples_file is not None and (not isinstance(examples_file, str) or not examples_file):
        raise ConfigError(f"examples_file must be a file name; got {examples_file!r}")
    listed = examples_file is not None or any(label.examples for label in labels)
    if mode == TEXT_MODE and listed:
        raise ConfigError(
            'the set lists examples, which mode "text" ignores: set mode = "prototype", '
            '"adapter" or "probe" to use them'
        )
    if mode != TEXT_MODE and not listed:
        raise ConfigError(
            f"mode {mode!r} learns from example images: list `examples` in some "
            "[[labels]] or name an `examples_file` (path,label)"
        )
    return mode, examples_file


def _reject_unknown(data: Any, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {where}: {', '.join(unknown)}; valid keys: {', '.join(allowed)}"
        )


def normal_text(text: str) -> str:
    """NFC, surrounding whitespace stripped: one spelling for what the tokenizer sees."""
    return unicodedata.normalize("NFC", text).strip()


def _parse_labels(raw: Any) -> tuple[Label, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("no labels: add at least one [[labels]] table with an id and prompts")
    labels: list[Label] = []
    seen: dict[str, tuple[int, str]] = {}  # normal id -> (label number, the id as written)
    for number, item in enumerate(raw, start=1):
        _reject_unknown(item, _LABEL_KEYS, f"label #{number}")
        written = item.get("id")
        if not isinstance(written, str) or not normal_text(written):
            raise ConfigError(f"label #{number} needs a non-empty string 'id'")
        label_id = normal_text(written)
        if label_id in seen:
            raise ConfigError(_duplicate(seen[label_id], (number, written)))
        if label_id == UNKNOWN:
            raise ConfigError(f"label id {UNKNOWN!r} is reserved for abstained answers")
        seen[label_id] = (number, written)
        prompts = _parse_prompts(item.get("prompts"), label_id)
        min_prob = _parse_label_min_prob(item, label_id)
        labels.append(Label(label_id, prompts, min_prob, _parse_examples(item, label_id)))
    return tuple(labels)


def _parse_examples(item: Mapping[str, Any], label_id: str) -> tuple[str, ...]:
    raw = item.get("examples", [])
    if not isinstance(raw, list) or not all(isinstance(p, str) and p.strip() for p in raw):
        raise ConfigError(f"label {label_id!r}: examples must be a list of image paths")
    return tuple(dict.fromkeys(p.strip() for p in raw))  # once each, in the order written


def _parse_label_min_prob(item: Mapping[str, Any], label_id: str) -> float | None:
    value = item.get("min_prob")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"label {label_id!r}: min_prob must be a number in [0, 1]; got {value!r}")
    return float(value)


def _duplicate(first: tuple[int, str], second: tuple[int, str]) -> str:
    """Both ids as written: they may differ only in spaces or in how "é" is encoded."""
    if first[1] == second[1]:
        return f"duplicate label id {second[1]!r} (labels #{first[0]} and #{second[0]})"
    return (
        f"duplicate label id {second[1]!r} (label #{second[0]}): the same as "
        f"{first[1]!r} (label #{first[0]}) once normalised (Unicode NFC, spaces stripped)"
    )


def _parse_prompts(raw: Any, label_id: str) -> tuple[str, ...]:
    prompts = [raw] if isinstance(raw, str) else raw
    if not isinstance(prompts, list) or not prompts:
        raise ConfigError(f"label {label_id!r} has no prompts")
    if not all(isinstance(p, str) and normal_text(p) for p in prompts):
        raise ConfigError(f"label {label_id!r} has an empty prompt")
    return tuple(normal_text(p) for p in prompts)


def _parse_templates(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise ConfigError("templates must be a non-empty list of strings")
    for template in raw:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise ConfigError(
                f"template {template!r}: {exc} (write literal braces as {{{{ }}}})"
            ) from exc
        if fields != [""]:
            raise ConfigError(f"template {template!r} must contain exactly one '{{}}'")
    # NFC only: spaces around a template's text are the file's own (and kept in its version)
    return tuple(unicodedata.normalize("NFC", t) for t in raw)


def _parse_scale(raw: Any) -> float | str:
    if raw == LEARNED:
        return LEARNED
    problem = scale_problem(raw)
    if problem is not None:
        raise ConfigError(f"logit_scale {problem} or {LEARNED!r}; got {raw!r}")
    return float(raw)


def scale_problem(value: Any) -> str | None:
    """What keeps ``value`` from being a logit scale, or None. NaN passed ``> 0``, and
    inf or 1e300 overflow the logits: every probability came out NaN, unabstained."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    try:
        usable = math.isfinite(value) and 0 < value <= MAX_LOGIT_SCALE
    except OverflowError:  # an integer too large for a float
        usable = False
    return None if usable else f"must be a finite number > 0 and <= {MAX_LOGIT_SCALE:g}"


def _parse_abstain(raw: Any) -> Abstain:
    _reject_unknown(raw, _ABSTAIN_KEYS, "[abstain]")
    values = {}
    for key in _ABSTAIN_KEYS:
        value = raw.get(key, 0.0)
        # the range check also refuses NaN (it compares false) and inf
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"abstain.{key} must be a number in [0, 1]; got {value!r}")
        values[key] = float(value)
    return Abstain(**values)


def label_set_toml(label_set: LabelSet) -> str:
    """The label set as a file `load_label_set` reads back to an equal LabelSet (JSON's
    string and array syntax is TOML's for these values)."""

    def value(v: object) -> str:
        return repr(float(v)) if isinstance(v, float) else json.dumps(v, ensure_ascii=False)

    lines = [
        f"name = {value(label_set.name)}",
        f"templates = {value(list(label_set.templates))}",
        f"logit_scale = {value(label_set.logit_scale)}",
        f"top_k = {label_set.top_k}",
    ]
    if label_set.few_shot:
        lines.append(f"mode = {value(label_set.mode)}")
    if label_set.examples_file is not None:
        lines.append(f"examples_file = {value(_anchored(label_set, label_set.examples_file))}")
    lines += [
        "",
        "[abstain]",
        f"min_prob = {value(label_set.abstain.min_prob)}",
        f"min_margin = {value(label_set.abstain.min_margin)}",
    ]
    for label in label_set.labels:
        lines += ["", "[[labels]]", f"id = {value(label.id)}"]
        lines.append(f"prompts = {value(list(label.prompts))}")
        if label.min_prob is not None:
            lines.append(f"min_prob = {value(label.min_prob)}")
        if label.examples:
            examples = [_anchored(label_set, p) for p in label.examples]
            lines.append(f"examples = {value(examples)}")
    return "\n".join(lines) + "\n"


def _anchored(label_set: LabelSet, written: str) -> str:
    """A relative path that names a file beside the set, made absolute: the written set
    may live in another folder. (Anything else is kept: a path as stored.)"""
    if not label_set.folder or Path(written).is_absolute():
        return written
    beside = Path(label_set.folder) / written
    return str(beside) if beside.exists() else written
