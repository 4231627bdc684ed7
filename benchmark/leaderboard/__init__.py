"""The leaderboard room: rows from verified run records, rendered as Markdown, CSV and a static HTML page, with
the published claims judged from the rows. Pure Python (no torch)."""
from benchmark.leaderboard.board import (DEFAULT_BASELINE, DEFAULT_MODE, MODES, LeaderboardError,  # noqa: F401
                                         build_board, regenerate)
