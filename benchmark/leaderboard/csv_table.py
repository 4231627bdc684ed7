"""leaderboard.csv: every number of the board unformatted, one row per board row (columns.COLUMNS' CSV fields).

Named csv_table, not csv, so that it never shadows the standard library's csv module it uses."""
from __future__ import annotations

import csv
import io
from typing import Any

from benchmark.leaderboard.columns import COLUMNS, Row


def fields(row: Row) -> dict[str, Any]:
    """The row's CSV fields: every column's values, then every column's details, then every column's paired
    comparisons (Column.csv, csv_detail, csv_paired)."""
    out: dict[str, Any] = {}
    for col in COLUMNS:
        out.update(col.csv(row))
    for col in COLUMNS:
        out.update(col.csv_detail(row))
    for col in COLUMNS:
        out.update(col.csv_paired(row))
    return out


def text(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    records = [fields(r) for r in rows]
    if records:
        w.writerow(list(records[0]))
    for record in records:
        w.writerow(["" if v is None else _inert(v) for v in record.values()])
    return buf.getvalue()


def _inert(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (=, +, -, @, or a tab or return first) gets a leading
    apostrophe (OWASP's advice); numbers are written as numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
