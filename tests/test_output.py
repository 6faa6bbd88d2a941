"""Rows out (meter_batch/output.py): display-width tables, and the format --out names."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from meter_batch.errors import ConfigError
from meter_batch.output import chosen_format, display_width, text_table, write_rows

LABELS = ["デジタルメーター(7セグ)", "回転式メーター", "analog"]


def test_a_table_of_japanese_labels_lines_up_on_a_terminal():
    table = pa.table({"label": LABELS, "images": [7, 1234, 56], "prob": [0.5, 0.25, 1.0]})
    lines = text_table(table).splitlines()
    assert display_width("回転式メーター") == 14 and len("回転式メーター") == 7
    header, rule, *rows, count = lines
    assert count == "(3 rows)"
    # numbers are right-aligned: every row (and the header) ends in the same column
    assert {display_width(line) for line in [header, rule, *rows]} == {display_width(rule)}
    # and the images column ends in the same terminal column on every row
    ends = set()
    for row, label, n in zip(rows, LABELS, ["7", "1234", "56"], strict=True):
        after = len(label) + row[len(label) :].index(n) + len(n)
        ends.add(display_width(row[:after]))
    assert ends == {display_width(LABELS[0]) + 2 + len("images")}
    assert rows[1] == "回転式メーター" + " " * 9 + "    1234  0.2500"


@pytest.mark.parametrize(
    ("fmt", "out", "chosen"),
    [(None, None, "table"), ("json", None, "json"), (None, "r.csv", "csv"),
     (None, "r.JSON", "json"), ("parquet", "r.parquet", "parquet"), ("csv", "r.txt", "csv")],
)  # fmt: skip
def test_the_format_is_the_flags_or_the_extensions(tmp_path, fmt, out, chosen):
    assert chosen_format(fmt, None if out is None else tmp_path / out) == chosen


@pytest.mark.parametrize(
    ("fmt", "out", "message"),
    [("csv", "r.json", "--out .*r.json is json, but --format says csv: drop one"),
     (None, "r.txt", "give one of .csv, .json, .parquet, or --format csv|json|parquet"),
     ("parquet", None, "--format parquet needs --out FILE.parquet")],
)  # fmt: skip
def test_a_format_that_contradicts_the_extension_is_refused(tmp_path, fmt, out, message):
    with pytest.raises(ConfigError, match=message):
        chosen_format(fmt, None if out is None else tmp_path / out)


def test_out_writes_the_format_its_extension_names(tmp_path, capsys):
    table = pa.table({"label": LABELS, "n": [1, 2, 3]})
    for name in ("r.csv", "r.json", "r.parquet"):
        write_rows(table, None, tmp_path / name)
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["format"] for s in said] == ["csv", "json", "parquet"] and {
        s["rows"] for s in said
    } == {3}
    assert (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines() == [
        '"label","n"',
        '"デジタルメーター(7セグ)",1',
        '"回転式メーター",2',
        '"analog",3',
    ]
    lines = (tmp_path / "r.json").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == table.to_pylist()
    assert pq.read_table(tmp_path / "r.parquet").equals(table)
