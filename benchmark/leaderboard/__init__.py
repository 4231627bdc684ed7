"""The leaderboard room: rows from verified run records, rendered as Markdown, CSV and a static HTML page, with
the published claims judged from the rows. Pure Python (no torch).

    board.py       reading and checking records, grouping them into rows, pairing each row with the baseline
    columns.py     the columns every table shows (header, cell text, sort value, CSV fields) and the page's prose
    markdown.py    LEADERBOARD.md
    csv_table.py   leaderboard.csv
    html.py        leaderboard.html, from templates/leaderboard.html.j2 with static/style.css and static/sort.js
    svg.py         the HTML page's pictures of a run: heatmap, curves, anatomy of the answers
    claims.py      published claims as data, judged from the rows
    pages.py       `regenerate`: the three files from one reading of the records
"""
from benchmark.leaderboard.board import DEFAULT_BASELINE, DEFAULT_MODE, MODES, LeaderboardError, build_board
from benchmark.leaderboard.pages import regenerate

__all__ = ["DEFAULT_BASELINE", "DEFAULT_MODE", "MODES", "LeaderboardError", "build_board", "regenerate"]
