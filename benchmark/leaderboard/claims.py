"""Published claims as data, judged from a leaderboard's rows: the verdict is computed, never typed.

A claims file (YAML; the leaderboard reads `claims.yaml` beside the records folder, or `--claims FILE`) lists:

    - claim: SeqLoRA collapses on the long benchmark     # what the papers say
      paper: "O-LoRA order-6 logs: AA 32.04, BWT -47.96"  # their number, as text
      metric: bwt                                        # a leaderboard metric: aa bwt fwt forgetting ppl_rel_change
      strategy: seq_lora                                 # the strategy as recorded (olora_long runs as olora)
      below: -20                                         # or above: X; or than: <strategy> + better: higher|lower
      why: "..."                                         # optional: what may explain a verdict that is not "holds"
      settings: "tuned: 20 trials on val (aa on val)"    # optional: the strategy's row with these settings (one
                                                         # text or a list), entries of the settings column

Without `settings`, a strategy with several rows on the board (two tuning budgets, a task-identity row beside a
task-agnostic one) leaves a threshold claim inconclusive ("several configurations") and a comparison too ("several
pairs"); `settings` picks the claimed strategy's row, and a comparison pairs it with the `than` row of identical
settings otherwise (the same tuning budget, for one).

Verdicts, at the leaderboard's 95 % level over seeds:
- a threshold (`below` / `above`): holds when the row's t-interval lies on the claimed side, does not hold when it
  lies on the other side, inconclusive when it straddles the threshold or there is one seed;
- a comparison (`than`): the paired t-test over the seeds both rows ran (rows of identical settings): holds when
  the difference is significant in the claimed direction, does not hold when it is significant the other way,
  inconclusive otherwise;
- either: not judged when the board has no records of a strategy the claim names (the reason lists those it has),
  or no row of the claimed strategy has the claim's settings (the reason lists each row's settings).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import ClbenchError
from benchmark.records import stats
from benchmark.records.metrics import METRICS, QUALITY

CLAIMABLE = [m.key for m in QUALITY]  # the leaderboard's quality metrics
FILE_NAME = "claims.yaml"


class ClaimsError(ClbenchError, ValueError):
    pass


def _check(i: int, c: Any, where: str) -> dict:
    if not isinstance(c, dict):
        raise ClaimsError(f"{where}: claim {i + 1} must be a mapping, got {c!r}")
    name = c.get("claim", f"claim {i + 1}")
    missing = [k for k in ("claim", "metric", "strategy") if k not in c]
    if missing:
        raise ClaimsError(f"{where}: {name!r} lacks {', '.join(missing)}")
    if c["metric"] not in CLAIMABLE:
        raise ClaimsError(f"{where}: {name!r}: metric must be one of {', '.join(CLAIMABLE)}, got {c['metric']!r}")
    tests = [k for k in ("below", "above", "than") if k in c]
    if len(tests) != 1:
        raise ClaimsError(f"{where}: {name!r} needs exactly one of below, above, than")
    if "than" in c and c.get("better") not in ("higher", "lower"):
        raise ClaimsError(f"{where}: {name!r}: a comparison needs better: higher or lower")
    for k in ("below", "above"):
        if k in c and (isinstance(c[k], bool) or not isinstance(c[k], (int, float)) or not math.isfinite(c[k])):
            raise ClaimsError(f"{where}: {name!r}: {k} must be a finite number, got {c[k]!r}")
    for k in ("claim", "paper", "strategy", "than", "why"):  # shown as text and matched as names
        if k in c and not isinstance(c[k], str):
            raise ClaimsError(f"{where}: {name!r}: {k} must be text, got {c[k]!r}")
    texts = _wanted(c)  # as the rows are picked by them
    texts_ok = isinstance(texts, list) and texts and all(isinstance(w, str) and w.strip() for w in texts)
    if "settings" in c and not texts_ok:
        raise ClaimsError(f"{where}: {name!r}: settings must be a non-empty text or a list of them, "
                          f"got {c['settings']!r}")
    unknown = sorted(set(c) - {"claim", "paper", "metric", "strategy", "below", "above", "than", "better", "why",
                               "settings"}, key=str)
    if unknown:
        raise ClaimsError(f"{where}: {name!r}: unknown key {unknown[0]!r}")
    return c


def load(path: Path) -> list[dict]:
    """The claims of a file, checked; a malformed file stops with one line naming it and the claim."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ClaimsError(f"claims file {path} could not be read ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, list):
        raise ClaimsError(f"claims file {path} must hold a list of claims")
    return [_check(i, c, str(path)) for i, c in enumerate(doc)]


def _wanted(c: dict) -> list[str]:
    wanted = c.get("settings", [])  # absent: every row of the strategy
    return [wanted] if isinstance(wanted, str) else wanted


def _rows(rows: list[dict], strategy: str, wanted: list[str] = ()) -> list[dict]:
    return [r for r in rows if r["strategy"] == strategy and all(w in r.get("setting_items", ()) for w in wanted)]


def _not_run(c: dict, rows: list[dict]) -> dict | None:
    """A claim about a strategy with no row on this board (never run here, or a misspelt name) is not judged:
    that is not the same as data that cannot decide it. Nor is one whose settings no row of the strategy has."""
    absent = [s for s in (c["strategy"], c.get("than")) if s is not None and not _rows(rows, s)]
    if absent:
        known = sorted({r["strategy"] for r in rows})
        return {"clbench": "n/a", "verdict": "not judged",
                "reason": f"no records of {' or '.join(absent)} here (strategies on this board: {', '.join(known) or 'none'})"}
    wanted = _wanted(c)
    if _rows(rows, c["strategy"], wanted):
        return None
    have = sorted({"; ".join(f'"{i}"' for i in r.get("setting_items", ())) or "(none)" for r in _rows(rows, c["strategy"])})
    return {"clbench": "n/a", "verdict": "not judged",
            "reason": f"no row of {c['strategy']} has the settings {'; '.join(repr(w) for w in wanted)} "
                      f"(its rows' settings: {' | '.join(have)})"}


def _threshold(c: dict, rows: list[dict]) -> dict:
    metric, found = c["metric"], _rows(rows, c["strategy"], _wanted(c))
    if len(found) != 1:
        return {"clbench": f"{len(found)} rows of {c['strategy']}", "verdict": "inconclusive",
                "reason": "no run" if not found else "several configurations of the strategy"}
    values = list(stats.metric_by_seed(found[0]["runs"], metric).values())
    mean, sd = stats.mean_sd(values)
    ci = stats.t_interval(values)
    m = METRICS[metric]
    s = m.scale
    text = m.text(mean) + ("" if sd is None else f" ± {sd * s:.2f} sd") + (
        "" if ci is None else f", 95 % CI [{ci[0] * s:.2f}, {ci[1] * s:.2f}]") + f" ({len(values)} seeds)"
    bound = c["below"] if "below" in c else c["above"]
    side = "below" if "below" in c else "above"
    if ci is None:
        return {"clbench": text, "verdict": "inconclusive", "reason": "fewer than two seeds"}
    # the one-sample t-test against the bound has the paired test's power: what these seeds can tell apart
    text += _power(mean * s - bound, sd * s, len(values), "from the bound")
    lo, hi = ci[0] * s, ci[1] * s
    claimed = hi < bound if side == "below" else lo > bound
    opposite = lo > bound if side == "below" else hi < bound
    verdict = "holds" if claimed else "does not hold" if opposite else "inconclusive"
    reason = f"the interval lies {side} {bound:g}" if claimed else (
        f"the interval lies {'above' if side == 'below' else 'below'} {bound:g}" if opposite else f"the interval contains {bound:g}")
    return {"clbench": text, "verdict": verdict, "reason": reason}


def _power(diff: float, sd: float, n: int, what: str) -> str:
    """'; detectable ±6.21 at 80 % power; +3.12 would need 12 seeds' at the observed sd."""
    detectable = stats.detectable_difference(sd, n)
    need = stats.seeds_needed(diff, sd)
    needs = (f"{diff:+.2f}{' ' + what if what else ''} would need {need} seeds" if need is not None else
             f"{diff:+.2f} would need more than {stats.MAX_SEEDS} seeds" if diff else "no difference to size")
    return f"; detectable ±{detectable:.2f} at 80 % power with {n} seeds, {needs}"


def _comparison(c: dict, rows: list[dict]) -> dict:
    m = METRICS[c["metric"]]
    metric, s = m.key, m.scale
    # settings pick the claimed strategy's row; its partner is the row of identical settings otherwise (`match`,
    # which also holds the tuning budget): the other strategy's own settings column never names the first's keys
    pairs = [(a, b) for a in _rows(rows, c["strategy"], _wanted(c)) for b in _rows(rows, c["than"])
             if a["match"] == b["match"]]
    # a row scored with task identity at test is never compared with a task-agnostic one: when a strategy has
    # both kinds of row, the claim is judged on the pair alike in that respect
    alike = [(a, b) for a, b in pairs if a.get("task_identity") == b.get("task_identity")]
    if pairs and not alike:
        return {"clbench": "n/a", "verdict": "not judged",
                "reason": "one of the two used task identity at test, the other did not"}
    if len(alike) != 1:
        return {"clbench": f"{len(alike)} pairs of rows with identical settings", "verdict": "inconclusive",
                "reason": "no pair of runs to compare" if not alike else "several pairs of configurations"}
    pairs = alike
    a, b = (stats.metric_by_seed(r["runs"], metric) for r in pairs[0])
    t = stats.paired_by_seed(a, b)
    seeds = t["seeds"]
    if t["diff"] is None:
        return {"clbench": "no common seeds", "verdict": "inconclusive", "reason": "no seed ran both"}
    # both means over the paired seeds only, so that they differ by exactly the difference shown
    text = (f"{c['strategy']} {m.text(stats.mean_sd([a[k] for k in seeds])[0])} vs {c['than']} "
            f"{m.text(stats.mean_sd([b[k] for k in seeds])[0])}: difference {t['diff'] * s:+.2f}")
    if t["ci"] is not None:
        text += f", 95 % CI [{t['ci'][0] * s:+.2f}, {t['ci'][1] * s:+.2f}], p = {t['p']:.3f}"
    text += f" ({len(seeds)} paired seeds)"
    if t["sd"] is not None:
        text += _power(t["diff"] * s, t["sd"] * s, len(seeds), "")
    if t["p"] is None:
        return {"clbench": text, "verdict": "inconclusive", "reason": "fewer than two paired seeds"}
    wanted = 1 if c["better"] == "higher" else -1
    if t["p"] < stats.ALPHA:
        ok = (t["diff"] > 0) == (wanted > 0)
        return {"clbench": text, "verdict": "holds" if ok else "does not hold",
                "reason": "significant in the claimed direction" if ok else "significant in the opposite direction"}
    return {"clbench": text, "verdict": "inconclusive", "reason": "the difference is not significant"}


def judge(claims: list[dict], rows: list[dict]) -> list[dict]:
    """Each claim with clbench's number (with its spread), the verdict and the reason for it."""
    out = []
    for c in claims:
        result = _not_run(c, rows) or (_comparison(c, rows) if "than" in c else _threshold(c, rows))
        out.append({"claim": c["claim"], "paper": c.get("paper", ""), "why": c.get("why", ""), **result})
    return out


def verdict_text(j: dict) -> str:
    """The verdict, its reason and, unless the claim holds, what differs from the papers' set-up."""
    return f"{j['verdict']}: {j['reason']}" + (f". {j['why']}" if j["why"] and j["verdict"] != "holds" else "")


# the claims table, one structure for the Markdown and the HTML page: HEADERS and a row of texts per claim
HEADERS = ("claim", "paper", "clbench", "verdict")
ABOUT = ("Each published claim judged from the rows above (`benchmark/leaderboard/claims.py`: 95 % t-intervals over seeds, "
         "paired t-tests between strategies on the seeds both ran).")


def table(judged: list[dict]) -> list[tuple[str, str, str, str]]:
    return [(j["claim"], j["paper"], j["clbench"], verdict_text(j)) for j in judged]
