"""Regeneration: read the records once, build the board in each scoring mode, write LEADERBOARD.md,
leaderboard.csv and leaderboard.html atomically, and say in a line or two what was written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.fileio import atomic_write
from benchmark.leaderboard import claims as claims_mod
from benchmark.leaderboard import csv_table, html, markdown
from benchmark.leaderboard.board import (DEFAULT_BASELINE, DEFAULT_MODE, LeaderboardError, build_board, load_valid,
                                         other_mode)
from benchmark.leaderboard.columns import duplicate_lines, quality_text, vs_baseline_text
from benchmark.records.metrics import METRICS


def _claims(runs_dir: Path, path: Path | None) -> list[dict] | None:
    """The claims of `path`, else of claims.yaml beside the records folder, else None."""
    beside = runs_dir.parent / claims_mod.FILE_NAME
    if path:
        return claims_mod.load(path)
    return claims_mod.load(beside) if beside.is_file() else None


def _summary(board: dict, out_dir: Path) -> str:
    text = (f"leaderboard: {len(board['rows'])} rows from {board['n_records']} records -> {out_dir / 'LEADERBOARD.md'}, "
            "leaderboard.csv, leaderboard.html")
    if board["duplicates"]:
        text += f"\n{len(board['duplicates'])} duplicate record(s) ignored:\n" + "\n".join(
            f"  {d}" for d in duplicate_lines(board["duplicates"]))
    if board["problems"]:
        text += f"\n{len(board['problems'])} record(s) not included:\n" + "\n".join(f"  {p}" for p in board["problems"])
    return text


def _row_line(board: dict, out_dir: Path, highlight: Path) -> str | None:
    """The row holding the record `highlight`, as one line for the end of a run."""
    aa, bwt = METRICS["aa"], METRICS["bwt"]
    for r in board["rows"]:
        if any(run["file"] == highlight.name for run in r["runs"]):
            return (f"leaderboard row: {r['strategy']} | {r['stream']} | {r['model']} | AA {quality_text(r, aa)} | "
                    f"BWT {quality_text(r, bwt)} | AA vs {board['baseline']} {vs_baseline_text(r)} | {r['n']} seed(s) "
                    f"-> {out_dir / 'LEADERBOARD.md'}")
    return None


def regenerate(runs_dir: Path, out_dir: Path, highlight: Path | None = None,
               baseline: str = DEFAULT_BASELINE, mode: str = DEFAULT_MODE, claims: Path | None = None) -> dict[str, Any]:
    """Rewrite the three leaderboard files; `highlight` (a record path) picks the row echoed in `row_line`,
    `baseline` the strategy every row is compared with, `claims` a claims file (default: claims.yaml beside the
    records folder, when there is one). Raises LeaderboardError, writing nothing, when no record under runs_dir
    is valid, so an existing leaderboard is never replaced by an empty one."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    claim_list = _claims(runs_dir, claims)
    # every record and prediction file is read and checked once; each mode's board is a view of the same set
    loaded = load_valid(runs_dir)
    board = build_board(runs_dir, out_dir, baseline, mode, claims=claim_list, loaded=loaded)
    if not board["rows"]:
        why = f"; the first: {board['problems'][0]}" if board["problems"] else ""
        raise LeaderboardError(f"no valid run records in {runs_dir} ({len(board['problems'])} not included{why}); "
                               "leaderboard left unchanged")
    # the HTML page shows the other mode's table too (no fallback: a mode no record holds is left out)
    other = build_board(runs_dir, out_dir, baseline, other_mode(board["mode"]), fallback=False, loaded=loaded)
    pages = {"LEADERBOARD.md": markdown.page(board), "leaderboard.csv": csv_table.text(board["rows"]),
             "leaderboard.html": html.page(board, other)}
    try:
        for name, text in pages.items():
            atomic_write(out_dir / name, text)
    except OSError as e:
        raise LeaderboardError(f"cannot write the leaderboard into {out_dir} ({e.strerror or e})") from None
    summary = _summary(board, out_dir)
    row_line = (_row_line(board, out_dir, highlight) if highlight is not None else None) or summary
    return {"rows": board["rows"], "problems": board["problems"], "duplicates": board["duplicates"],
            "summary": summary, "row_line": row_line}
