"""The report's charts as Vega-Lite specifications, built with altair.

The data travel inside each specification (the report is one static folder); the
Vega, Vega-Lite and vega-embed scripts that draw them are written once beside the page
(render.py). Only aggregates and the sampled map points go in: never a row per image
of a big store.
"""

from __future__ import annotations

from typing import Any

import altair as alt

Spec = dict[str, Any]
MAP_SELECTION = "brush"  # the map's box selection, which report.js follows
WIDTH = 560


DATA = "values"  # the one named dataset of each specification


# A named dataset: the rows join the specification after altair has built it (`_spec`),
# since altair validates every value it holds (15 s for a map of 20,000 points).
NAMED = alt.Data(name=DATA)


def _spec(chart: Any, rows: list[dict[str, Any]]) -> Spec:
    spec: Spec = chart.to_dict()
    spec.setdefault("datasets", {})[DATA] = rows  # beside any small inline ones altair moved
    return spec


def runs_chart(runs: list[dict[str, Any]]) -> Spec:
    base = alt.Chart(NAMED).encode(x=alt.X("run_id:N", title="run", sort=None))
    bars = base.mark_bar().encode(y=alt.Y("encoded:Q", title="images encoded"))
    rate = base.mark_line(point=True, color="#d62728").encode(
        y=alt.Y("images_per_s:Q", title="images/s"),
        tooltip=["run_id:N", "finished_at:N", "encoded:Q", "images_per_s:Q"],
    )
    chart = alt.layer(bars, rate).resolve_scale(y="independent")
    return _spec(chart.properties(width=WIDTH, height=180), runs)


def failures_chart(kinds: list[dict[str, Any]]) -> Spec:
    chart = (
        alt.Chart(NAMED)
        .mark_bar()
        .encode(x=alt.X("count:Q", title="files"), y=alt.Y("kind:N", sort="-x", title=None))
    )
    return _spec(chart.properties(width=WIDTH, height=alt.Step(18)), kinds)


def label_counts_chart(counts: list[dict[str, Any]]) -> Spec:
    rows = [
        {"label": c["label"], "answer": answer, "images": images}
        for c in counts
        for answer, images in (
            ("answered", c["images"] - c["abstained"]),
            ("abstained", c["abstained"]),
        )
    ]
    chart = (
        alt.Chart(NAMED)
        .mark_bar()
        .encode(
            x=alt.X("images:Q", stack="zero"),
            y=alt.Y("label:N", sort="-x", title="top label"),
            color=alt.Color("answer:N", scale=alt.Scale(range=["#4c78a8", "#bab0ac"])),
            tooltip=["label:N", "answer:N", "images:Q"],
        )
    )
    return _spec(chart.properties(width=WIDTH, height=alt.Step(20)), rows)


def histograms_chart(bins: list[dict[str, Any]], bin_width: float) -> Spec:
    rows = [{**b, "upper": b["bin"] + bin_width} for b in bins]
    chart = (
        alt.Chart(NAMED)
        .mark_bar()
        .encode(
            x=alt.X("bin:Q", title=None, scale=alt.Scale(domain=[0, 1])),
            x2="upper:Q",
            y=alt.Y("images:Q", title="images"),
            tooltip=["label:N", "measure:N", "bin:Q", "images:Q"],
        )
    )
    faceted = chart.properties(width=220, height=90).facet(
        row=alt.Row("label:N", title=None), column=alt.Column("measure:N", title=None)
    )
    return _spec(faceted.resolve_scale(y="independent"), rows)


def transitions_chart(rows: list[dict[str, Any]], before: str, after: str) -> Spec:
    base = alt.Chart(NAMED).encode(
        x=alt.X("after:N", title=f"after ({after})"),
        y=alt.Y("before:N", title=f"before ({before})"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("images:Q", scale=alt.Scale(scheme="blues")),
        tooltip=["before:N", "after:N", "images:Q"],
    )
    text = base.mark_text().encode(text="images:Q")
    return _spec(alt.layer(cells, text).properties(width=320, height=320), rows)


def reliability_chart(bins: list[dict[str, Any]]) -> Spec:
    """Accuracy against mean confidence per confidence bin, beside the diagonal."""
    points = (
        alt.Chart(NAMED)
        .mark_line(point=True)
        .encode(
            x=alt.X("confidence:Q", scale=alt.Scale(domain=[0, 1]), title="mean confidence"),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            tooltip=["confidence:Q", "accuracy:Q", "images:Q"],
        )
    )
    diagonal = (
        alt.Chart(alt.Data(values=[{"v": 0.0}, {"v": 1.0}]))
        .mark_line(strokeDash=[4, 4], color="gray")
        .encode(x="v:Q", y="v:Q")
    )
    return _spec(alt.layer(diagonal, points).properties(width=320, height=320), bins)


def map_chart(points: list[dict[str, Any]]) -> Spec:
    """The projected sample, coloured by top label; hovering shows the thumbnail (the
    tooltip's `image` key), a box selection filters the map's gallery (report.js)."""
    brush = alt.selection_interval(name=MAP_SELECTION)
    chart = (
        alt.Chart(NAMED)
        .mark_circle(size=24, opacity=0.7)
        .encode(
            x=alt.X("x:Q", title=None, axis=None),
            y=alt.Y("y:Q", title=None, axis=None),
            color=alt.Color("label:N", title="top label"),
            tooltip=[
                alt.Tooltip("image:N", title="image"),
                alt.Tooltip("path:N"),
                alt.Tooltip("label:N"),
                alt.Tooltip("prob:Q", format=".3f"),
            ],
        )
    )
    return _spec(chart.add_params(brush).properties(width=WIDTH, height=440), points)
