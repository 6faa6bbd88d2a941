"""Rows out to a terminal, a pipe or a file: one table of results written as a
display-width-aligned text table, CSV, JSON lines or Parquet.

The format is `--format`'s, or `--out`'s extension (`.csv`, `.json`, `.parquet`); the two
must agree. Text tables pad by display width (wcwidth), not characters: `回転式メーター`
takes 14 columns of a terminal, not 7, and a column of Japanese labels must still line up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
from wcwidth import wcswidth

from meter_batch.errors import ConfigError

Format = Literal["table", "csv", "json", "parquet"]
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".json": "json", ".parquet": "parquet"}
MAX_TABLE_ROWS = 200  # a terminal table; csv / json / parquet carry every row


def display_width(text: str) -> int:
    width = wcswidth(text)
    return len(text) if width < 0 else width  # a control character: wcwidth gives up


def ljust(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def rjust(text: str, width: int) -> str:
    return " " * max(0, width - display_width(text)) + text


def chosen_format(fmt: Format | None, out: Path | None) -> Format:
    """`--format`, or the one `--out`'s extension names; a mismatch is refused."""
    if out is None:
        if fmt == "parquet":
            raise ConfigError("--format parquet needs --out FILE.parquet (Parquet is binary)")
        return fmt or "table"
    implied = _EXTENSIONS.get(out.suffix.lower())
    if implied is None and fmt in (None, "table"):
        known = ", ".join(_EXTENSIONS)
        raise ConfigError(f"--out {out}: give one of {known}, or --format csv|json|parquet")
    if fmt not in (None, "table", implied) and implied is not None:
        raise ConfigError(f"--out {out} is {implied}, but --format says {fmt}: drop one")
    return implied or fmt or "table"


def write_rows(table: pa.Table, fmt: Format | None = None, out: Path | None = None) -> None:
    """``table`` in the chosen format, to ``out`` (then one JSON line says where) or stdout."""
    chosen = chosen_format(fmt, out)
    if out is None:
        _to_stdout(table, chosen)
        return
    if not out.parent.is_dir():
        raise ConfigError(f"--out: folder {out.parent} does not exist")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name")
    if chosen == "parquet":
        pyarrow.parquet.write_table(table, out)
    else:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            handle.write(_as_text(table, chosen))
    print(json.dumps({"rows": table.num_rows, "out": str(out), "format": chosen}))


def _to_stdout(table: pa.Table, chosen: Format) -> None:
    """Row by row (a reader that goes away, `| head -1`, is noticed at the next row)."""
    if chosen == "csv":
        pyarrow.csv.write_csv(_flat_for_csv(table), sys.stdout.buffer)
    elif chosen == "json":
        for line in _json_lines(table):
            sys.stdout.write(line)
    else:
        print(text_table(table))


def _as_text(table: pa.Table, chosen: Format) -> str:
    if chosen == "json":
        return "".join(_json_lines(table))
    if chosen == "csv":
        sink = pa.BufferOutputStream()
        pyarrow.csv.write_csv(_flat_for_csv(table), sink)
        return bytes(sink.getvalue()).decode("utf-8")
    return text_table(table) + "\n"


def _json_lines(table: pa.Table) -> Iterator[str]:
    for batch in table.to_batches(max_chunksize=4096):  # never every row as dicts at once
        for row in batch.to_pylist():
            yield json.dumps(row, ensure_ascii=False, default=str) + "\n"


def _flat_for_csv(table: pa.Table) -> pa.Table:
    """CSV has no lists or binary: such columns are written as JSON text."""
    for index, column in enumerate(table.columns):
        kind = column.type
        if (
            pa.types.is_nested(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_fixed_size_binary(kind)
        ):
            text = [json.dumps(v, default=lambda b: b.hex()) for v in column.to_pylist()]
            table = table.set_column(index, table.field(index).name, pa.array(text, pa.string()))
    return table


def text_table(table: pa.Table, max_rows: int = MAX_TABLE_ROWS) -> str:
    """Columns padded by display width; numbers to the right, text to the left."""
    names = table.column_names
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    rows = [[_cell(v) for v in row.values()] for row in table.slice(0, max_rows).to_pylist()]
    widths = [
        max([display_width(n), *(display_width(r[i]) for r in rows)]) for i, n in enumerate(names)
    ]

    def line(cells: list[str]) -> str:
        padded = [
            rjust(c, w) if right else ljust(c, w)
            for c, w, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    lines = [line(names), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in rows]
    if table.num_rows > max_rows:
        lines.append(f"... {table.num_rows - max_rows} more rows (use --format csv or --out)")
    lines.append(f"({table.num_rows} rows)")
    return "\n".join(lines)


CELL_WIDTH = 60  # terminal columns: a long path or a list is cut, with "..."


def _cell(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
    if display_width(text) <= CELL_WIDTH:
        return text
    text = text[: CELL_WIDTH - 3]  # no wider in characters than in columns
    while display_width(text) > CELL_WIDTH - 3:
        text = text[:-1]
    return text + "..."
