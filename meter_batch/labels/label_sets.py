"""Label-set files -> validated LabelSet -> the label embedding matrix.

A label set is TOML:

    name = "meter-type"
    templates = ["a photo of a {}.", "{}"]   # optional, default ["{}"]
    logit_scale = 100                        # optional: a number, or "learned"
    top_k = 3                                # optional
    [abstain]                                # optional
    min_prob = 0.5
    min_margin = 0.1
    [[labels]]
    id = "digital_7seg"
    prompts = ["デジタルメーター(7セグ)"]

Each label's embedding is the mean of its normalized prompt × template text
embeddings, renormalized — what open_clip's `build_zero_shot_classifier` does.
"""

from __future__ import annotations

import hashlib
import json
import string
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
_TOP_KEYS = ("name", "templates", "logit_scale", "top_k", "abstain", "labels")
_LABEL_KEYS = ("id", "prompts")
_ABSTAIN_KEYS = ("min_prob", "min_margin")


@dataclass(frozen=True)
class Label:
    id: str
    prompts: tuple[str, ...]


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

    @property
    def label_ids(self) -> list[str]:
        return [label.id for label in self.labels]

    def canonical(self) -> dict[str, Any]:
        return asdict(self)

    def version(self, model: ModelIdentity) -> str:
        """A hash of the normalized content and the model: same file -> same version."""
        payload = json.dumps({"labels": self.canonical(), "model": model.to_json()}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def load_label_set(path: Path) -> LabelSet:
    data = read_toml(path)
    try:
        return parse_label_set(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse_label_set(data: Mapping[str, Any]) -> LabelSet:
    _reject_unknown(data, _TOP_KEYS, "label set")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("'name' must be a non-empty string")
    labels = _parse_labels(data.get("labels"))
    templates = _parse_templates(data.get("templates", ["{}"]))
    top_k = data.get("top_k", 3)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1; got {top_k!r}")
    return LabelSet(
        name=name.strip(),
        labels=labels,
        templates=templates,
        logit_scale=_parse_scale(data.get("logit_scale", DEFAULT_SCALE)),
        top_k=min(top_k, len(labels)),
        abstain=_parse_abstain(data.get("abstain", {})),
    )


def _reject_unknown(data: Any, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {where}: {', '.join(unknown)}; valid keys: {', '.join(allowed)}"
        )


def _parse_labels(raw: Any) -> tuple[Label, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("no labels: add at least one [[labels]] table with an id and prompts")
    labels, seen = [], set()
    for number, item in enumerate(raw, start=1):
        _reject_unknown(item, _LABEL_KEYS, f"label #{number}")
        label_id = item.get("id")
        if not isinstance(label_id, str) or not label_id.strip():
            raise ConfigError(f"label #{number} needs a non-empty string 'id'")
        if label_id in seen:
            raise ConfigError(f"duplicate label id {label_id!r}")
        if label_id == UNKNOWN:
            raise ConfigError(f"label id {UNKNOWN!r} is reserved for abstained answers")
        seen.add(label_id)
        labels.append(Label(label_id, _parse_prompts(item.get("prompts"), label_id)))
    return tuple(labels)


def _parse_prompts(raw: Any, label_id: str) -> tuple[str, ...]:
    prompts = [raw] if isinstance(raw, str) else raw
    if not isinstance(prompts, list) or not prompts:
        raise ConfigError(f"label {label_id!r} has no prompts")
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError(f"label {label_id!r} has an empty prompt")
    return tuple(p.strip() for p in prompts)


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
    return tuple(raw)


def _parse_scale(raw: Any) -> float | str:
    if raw == LEARNED:
        return LEARNED
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise ConfigError(f"logit_scale must be a positive number or {LEARNED!r}; got {raw!r}")
    return float(raw)


def _parse_abstain(raw: Any) -> Abstain:
    _reject_unknown(raw, _ABSTAIN_KEYS, "[abstain]")
    values = {}
    for key in _ABSTAIN_KEYS:
        value = raw.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"abstain.{key} must be a number in [0, 1]; got {value!r}")
        values[key] = float(value)
    return Abstain(**values)
