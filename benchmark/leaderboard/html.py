"""leaderboard.html: one self-contained, sortable page rendered from templates/leaderboard.html.j2.

As pytest-html does, the page is a Jinja2 template with autoescape on, handed plain data: every text from a
record (names, settings, file names, problems) is escaped by the template, never by hand. The CSS and the
sorting script are files of their own (static/), inlined so the page needs nothing beside it.
"""
from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import jinja2

from benchmark.leaderboard import claims, svg
from benchmark.leaderboard.columns import COLUMNS, Row, duplicate_lines, explanation, mode_title


@functools.cache  # one environment per process: it caches the compiled template
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("benchmark.leaderboard", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("leaderboard.html.j2")


def _static(name: str) -> str:
    return (resources.files("benchmark.leaderboard") / "static" / name).read_text(encoding="utf-8")


def _cell(col: Any, row: Row, i: int) -> dict[str, Any]:
    sort = col.sort_value(row)
    return {"sort": "" if sort is None else sort, "is_text": col.is_text,
            "html": col.html(row, i) if col.html else col.text(row)}


def _table(table_id: str, board: dict[str, Any]) -> dict[str, Any]:
    return {"id": table_id, "title": mode_title(board), "headers": [c.title(board["baseline"]) for c in COLUMNS],
            "rows": [[_cell(c, r, i) for c in COLUMNS] for i, r in enumerate(board["rows"])]}


def _run(run: dict, records_href: str) -> dict[str, Any]:
    # the anatomy plot needs every evaluation's anatomy (generation-scored runs that kept predictions)
    anatomy = run.get("anatomy")
    return {"seed": run["seed"], "file": run["file"], "href": records_href + run["file"],
            "heatmap": svg.heatmap_svg(run["matrix"]), "curves": svg.curves_svg(run["matrix"]),
            "anatomy": svg.anatomy_svg(anatomy, run["matrix"]["rows"]) if anatomy and all(anatomy) else None}


def _runs(row: Row, records_href: str) -> dict[str, Any]:
    return {"title": " · ".join(row[k] for k in ("strategy", "stream", "model", "config")),
            "strategy": row["strategy"], "stream": row["stream"], "runs": [_run(r, records_href) for r in row["runs"]]}


def page(board: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """The board's table (its mode), the claims, the other mode's table when records hold its scores too, and
    per row its runs with their heatmaps, curves and anatomy plots."""
    judged = board["claims"]
    return _template().render(
        style=_static("style.css"), script=_static("sort.js"), explanation=explanation(board["baseline"], board.get("unavailable"), board.get("unverified", 0)),
        main=_table("board", board),
        claims={"headers": claims.HEADERS, "rows": claims.table(judged)} if judged else None,
        other=_table("board-" + other["mode"], other) if other is not None and other["rows"] else None,
        runs=[_runs(r, board["records_href"]) for r in board["rows"]],
        duplicates=duplicate_lines(board["duplicates"]), problems=board["problems"])
