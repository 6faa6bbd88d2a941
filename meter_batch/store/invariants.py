"""What a writer relies on, checked when it opens a store: no file listed twice, image ids
below ``next_image_id`` and never shared by two parts, each label-set version once.

`verify` would report a breach, but a writer that carried on would spread it: predictions
written twice, ids reused, FAISS holding ids twice. The ids come from the parts' Parquet
footers (min/max statistics), so the check reads no data pages.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from meter_batch.errors import StoreError
from meter_batch.store.integrity import checked
from meter_batch.store.records import Manifest


def check_writable(root: Path, manifest: Manifest) -> None:
    """Raise StoreError (one line, naming the repair) if ``manifest`` breaks an invariant."""
    problems = writer_problems(root, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StoreError(
            f"store {root} is damaged: {problems[0]}{more}; writers refuse it until "
            f"`meter-batch repair {root}` fixes it (`meter-batch verify {root}` lists all)"
        )


def writer_problems(root: Path, manifest: Manifest) -> list[str]:
    problems = [f"{relpath} is listed {n} times" for relpath, n in _listed(manifest) if n > 1]
    problems += _id_problems(root, manifest)
    versions = Counter(entry.version for entry in manifest.label_sets)
    problems += [f"label set {v} is listed {n} times" for v, n in versions.items() if n > 1]
    problems += [
        f"label set {e.version} counts images up to {e.scored_below_id} as scored, "
        f"beyond next_image_id {manifest.next_image_id}"
        for e in manifest.label_sets
        if e.scored_below_id > manifest.next_image_id
    ]
    return problems


def _id_problems(root: Path, manifest: Manifest) -> list[str]:
    problems = []
    parts = dict.fromkeys(manifest.embedding_parts)  # a part listed twice is said above
    spans = [(id_range(root, manifest, relpath), relpath) for relpath in parts]
    ranges = sorted((span, relpath) for span, relpath in spans if span is not None)
    for (span, relpath), (later, other) in itertools.pairwise(ranges):
        if later[0] <= span[1]:
            problems.append(f"{relpath} and {other} share image ids")
    top = max((span[1] for span, _ in ranges), default=-1)
    if top >= manifest.next_image_id:
        problems.append(f"next_image_id {manifest.next_image_id} is not above image id {top}")
    return problems


def _listed(manifest: Manifest) -> list[tuple[str, int]]:
    files = [*manifest.embedding_parts, *manifest.failure_parts, *manifest.tombstone_parts]
    files += [p for entry in manifest.label_sets for p in entry.parts]
    return list(Counter(files).items())


def id_range(root: Path, manifest: Manifest, relpath: str) -> tuple[int, int] | None:
    """(min, max) image_id of a part from its footer; None for an empty part."""
    path = checked(root, relpath, manifest.files.get(relpath))
    try:
        metadata = pq.ParquetFile(path).metadata
        column = metadata.schema.names.index("image_id")
        stats = [
            metadata.row_group(i).column(column).statistics for i in range(metadata.num_row_groups)
        ]
        if all(s is not None and s.has_min_max for s in stats):
            spans = [(int(s.min), int(s.max)) for s in stats if s is not None]
        else:
            ids = pq.ParquetFile(path).read(columns=["image_id"]).column(0).to_pylist()
            spans = [(min(ids), max(ids))] if ids else []
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise StoreError(f"{path} cannot be read ({exc}): the store is damaged") from exc
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans)
