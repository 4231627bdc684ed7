"""The HTML page's pictures of one run, drawn as inline SVG: the accuracy matrix as a heatmap, per-task accuracy
across stages, and the anatomy of the answers per evaluation.

The geometry stays in Python (the numbers are computed); every picture is built with `_el`, which escapes each
text and attribute value, and is returned as markupsafe.Markup so the page's template inserts it unescaped.
"""
from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup

SVG_NS = "http://www.w3.org/2000/svg"
# ten distinct hues for the task lines (matplotlib's tab10)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
# one evaluation's examples, split: (key, legend, colour), stacked bottom-up in this order
ANATOMY_PARTS = [("correct", "correct", "#4c9a2a"), ("same_task_label", "another label of the task", "#f2c14e"),
                 ("just_trained", "label of the task just trained", "#d62728"),
                 ("other_earlier", "label of another task", "#ff9f40"), ("no_label", "no label", "#999")]


def _el(tag: str, content: Any = None, **attrs: Any) -> Markup:
    """<tag a="v" ...>content</tag>, or <tag .../> without content. Python names map to SVG's: text_anchor is
    text-anchor, class_ is class. A str content or value is escaped; Markup content is kept as it is."""
    names = (k.rstrip("_").replace("_", "-") for k in attrs)
    head = Markup("").join(Markup(' {}="{}"').format(n, v) for n, v in zip(names, attrs.values()))
    if content is None:
        return Markup("<{}{}/>").format(tag, head)
    return Markup("<{0}{1}>{2}</{0}>").format(tag, head, content)


def _svg(parts: list[Markup], width: Any, height: Any, **attrs: Any) -> Markup:
    return _el("svg", Markup("").join(parts), xmlns=SVG_NS, **attrs, width=width, height=height, font_size=10,
               font_family="sans-serif")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _color(v: Any) -> str:
    # white (0 %) to blue (100 %); a missing or non-finite cell is grey, never a colour on that scale
    if not _finite(v):
        return "#bbb"
    t = max(0.0, min(1.0, v / 100))
    return f"rgb({int(255 - 200 * t)},{int(255 - 140 * t)},255)"


def _cell_label(v: Any) -> str:
    return f"{v:.0f}" if _finite(v) else "n/a"


def heatmap_svg(matrix: dict) -> Markup:
    """The accuracy matrix as an SVG heatmap: rows = after each stage, columns = tasks."""
    vals, rows, cols = matrix["values"], matrix["rows"], matrix["columns"]
    cw, ch, left, top = 54, 20, 150, 60
    parts = []
    for j, c in enumerate(cols):
        x = left + j * cw + cw / 2
        parts.append(_el("text", c, x=x, y=top - 6, text_anchor="start", transform=f"rotate(-35 {x} {top - 6})"))
    for i, (name, row) in enumerate(zip(rows, vals)):
        y = top + i * ch
        parts.append(_el("text", name[:24], x=left - 4, y=y + 14, text_anchor="end"))
        for j, v in enumerate(row):
            parts.append(_el("rect", x=left + j * cw, y=y, width=cw, height=ch, fill=_color(v), stroke="#fff"))
            parts.append(_el("text", _cell_label(v), x=left + j * cw + cw / 2, y=y + 14, text_anchor="middle"))
    return _svg(parts, left + cw * len(cols) + 5, top + ch * len(rows) + 5)


def curves_svg(matrix: dict) -> Markup:
    """Per-task accuracy across stages, one polyline per task; the x axis names each stage (matrix rows)."""
    vals, cols, stages = matrix["values"], matrix["columns"], matrix["rows"]
    w, plot_h, pad, label_h = 360, 160, 30, 60
    n = len(vals)
    xs = [pad + (w - 2 * pad) * (i / max(n - 1, 1)) for i in range(n)]
    y0 = plot_h - pad
    parts = [_el("line", x1=pad, y1=y0, x2=w - pad, y2=y0, stroke="#888"),
             _el("line", x1=pad, y1=pad / 2, x2=pad, y2=y0, stroke="#888"),
             _el("text", "100", x=pad - 4, y=pad / 2 + 4, text_anchor="end"),
             _el("text", "0", x=pad - 4, y=y0, text_anchor="end")]
    for x, name in zip(xs, stages):
        # slanted down-right from each stage's tick, so long task names neither overlap nor leave the picture
        parts.append(_el("text", str(name)[:20], x=f"{x:.1f}", y=y0 + 12, text_anchor="start",
                         transform=f"rotate(30 {x:.1f} {y0 + 12})"))
    for j, c in enumerate(cols):
        color = PALETTE[j % len(PALETTE)]
        # a non-finite value has no place on the axis: the line skips it rather than drawing it at 0 or 100
        pts = " ".join(f"{xs[i]:.1f},{y0 - (plot_h - 1.5 * pad) * vals[i][j] / 100:.1f}"
                       for i in range(n) if _finite(vals[i][j]))
        parts.append(_el("polyline", fill="none", stroke=color, stroke_width=1.5, points=pts))
        parts.append(_el("text", c, x=w - pad + 8, y=pad / 2 + 12 * j + 4, fill=color))
    return _svg(parts, w + 120, plot_h + label_h)


def _anatomy_shares(row: dict) -> dict[str, float]:
    """One evaluation's examples over all tasks, split by ANATOMY_PARTS, as fractions."""
    total = sum(c["examples"] for c in row.values())
    if not total:
        return {}
    part = lambda k: sum(c[k] for c in row.values())  # noqa: E731
    counts = {"correct": total - part("wrong"), "same_task_label": part("same_task_label"),
              "just_trained": part("just_trained"), "other_earlier": part("other_task_label") - part("just_trained"),
              "no_label": part("no_label")}
    return {k: v / total for k, v in counts.items()}


def _anatomy_bar(row: dict, name: str, x: float, bottom: float, plot_h: float, w_bar: float) -> list[Markup]:
    parts, y = [], bottom
    shares = _anatomy_shares(row or {})
    for key, label, color in ANATOMY_PARTS:
        h = plot_h * shares.get(key, 0.0)
        if h > 0:
            y -= h
            parts.append(_el("rect", _el("title", f"{name}: {label}"), class_=f"part-{key}", x=x, y=f"{y:.2f}",
                             width=w_bar, height=f"{h:.2f}", fill=color))
    lx, ly = x + w_bar / 2, bottom + 10
    parts.append(_el("text", name[:18], x=lx, y=ly, text_anchor="start", transform=f"rotate(30 {lx} {ly})"))
    return parts


def anatomy_svg(anatomy_rows: list, stage_names: list[str]) -> Markup:
    """A stacked bar per evaluation: the share of all test examples answered correctly, and of those answered
    wrongly whether the answer was another label of the task, a label of the task just trained, a label of
    another task, or no label (generation scoring)."""
    w_bar, gap, plot_h, left, top = 34, 14, 150, 34, 10
    n = len(anatomy_rows)
    parts = [_el("text", "100%", x=left - 4, y=top + 8, text_anchor="end"),
             _el("text", "0", x=left - 4, y=top + plot_h, text_anchor="end")]
    for i, (row, name) in enumerate(zip(anatomy_rows, stage_names)):
        parts += _anatomy_bar(row, str(name), left + i * (w_bar + gap), top + plot_h, plot_h, w_bar)
    lx = left + n * (w_bar + gap) + 10
    for j, (_, label, color) in enumerate(ANATOMY_PARTS):
        ly = top + 12 + 14 * j
        parts += [_el("rect", x=lx, y=ly - 8, width=10, height=10, fill=color), _el("text", label, x=lx + 14, y=ly)]
    return _svg(parts, left + n * (w_bar + gap) + 200, top + plot_h + 70, class_="anatomy")
