"""Small, dependency-free statistics for the leaderboard: Student t, seed intervals, paired tests and their
power (noncentral t by quadrature), bootstrap.

scipy is not a dependency, so the t distribution is computed here from the regularised incomplete beta
function (continued fraction, as in Numerical Recipes 6.4); the quantile is found by bisection on the CDF.
Everything is deterministic: the same inputs give the same floats, so the leaderboard stays a pure function
of the records.
"""
from __future__ import annotations

import math
import random
import statistics
from typing import Callable, Sequence

LEVEL = 0.95
ALPHA = 0.05


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    # modified Lentz; converges fast for x < (a + 1) / (a + b + 2), which the caller guarantees
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the CDF of a Beta(a, b) variable at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    # the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the continued fraction in its fast region
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection (the CDF is monotone, so this cannot miss)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None below two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of a mean, sd / sqrt(n) with the sample sd (n - 1): lm-evaluation-harness's `mean_stderr`,
    which the record's general rows hold."""
    return statistics.stdev(values) / math.sqrt(len(values))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """mean ± t_{(1+level)/2, n-1} * sd / sqrt(n): the interval for the mean over seeds; None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = mean_sd(values)
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_t_test(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """Paired comparison of a against b (same seeds, same order): mean of a - b, its t-interval, two-sided p.

    With fewer than two pairs there is no spread, so interval and p are None. Identical non-zero differences
    (sd 0) give p 0; all-zero differences give p 1.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_t_test needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else None
    if n < 2:
        return {"n": n, "diff": mean, "ci": None, "p": None, "sd": None, "detectable": None, "seeds_needed": None}
    sd = statistics.stdev(diffs)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = 2.0 * (1.0 - t_cdf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    # power at the observed spread: the smallest difference these seeds detect 80 % of the time, and the seeds
    # that the observed difference would need
    return {"n": n, "diff": mean, "ci": t_interval(diffs, level), "p": min(1.0, p), "sd": sd,
            "detectable": detectable_difference(sd, n), "seeds_needed": seeds_needed(mean, sd)}



def metric_by_seed(runs: Sequence[dict], key: str) -> dict[int, float]:
    """`metrics[key]` of each run (a leaderboard row's `runs`) by its seed; runs without the metric are left out."""
    return {run["seed"]: run["metrics"][key] for run in runs if run["metrics"].get(key) is not None}


def paired_by_seed(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> dict:
    """paired_t_test of a against b over the seeds both have, listed under `seeds`."""
    seeds = sorted(set(a) & set(b))
    return {**paired_t_test([a[s] for s in seeds], [b[s] for s in seeds], level), "seeds": seeds}

# ---------------------------------------------------------------- power of the paired t-test
POWER = 0.8  # the power a comparison is sized for
MAX_SEEDS = 1000  # seeds_needed answers None beyond this
_GRID = 800  # Simpson intervals over the chi distribution: |error| < 1e-6 against statsmodels' noncentral t


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def paired_power(d: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with n pairs against a true standardised difference d (mean
    difference / sd of the differences): P(|T| > t_crit) for T noncentral t with n - 1 degrees of freedom and
    noncentrality d sqrt(n). Computed as E_U[Phi(d sqrt(n) - c U) + Phi(-d sqrt(n) - c U)] with c the critical
    value over sqrt(df) and U = sqrt(chi2_df / 1) integrated by Simpson's rule (no scipy here)."""
    if n < 2:
        return float("nan")
    df = n - 1
    c = t_quantile(1.0 - alpha / 2.0, df) / math.sqrt(df)
    delta = d * math.sqrt(n)
    top = math.sqrt(df) + 12.0
    h = top / _GRID
    log_norm = math.log(2.0) - (df / 2.0) * math.log(2.0) - math.lgamma(df / 2.0)

    def f(u: float) -> float:
        if u <= 0.0:
            return 0.0
        density = math.exp(log_norm + (df - 1) * math.log(u) - u * u / 2.0)  # the chi distribution
        return density * (_phi(delta - c * u) + _phi(-delta - c * u))

    total = f(0.0) + f(top) + sum((4.0 if i % 2 else 2.0) * f(i * h) for i in range(1, _GRID))
    return min(1.0, total * h / 3.0)


def detectable_difference(sd_diff: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float | None:
    """The smallest true mean difference the paired t-test over n seeds detects with `power` (two-sided `alpha`),
    at the observed sd of the differences; None with fewer than two seeds."""
    if n < 2 or sd_diff is None:
        return None
    if sd_diff == 0.0:
        return 0.0
    lo, hi = 0.0, 1.0
    while paired_power(hi, n, alpha) < power:
        hi *= 2.0
    for _ in range(40):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if paired_power(mid, n, alpha) < power else (lo, mid)
    return hi * sd_diff


def seeds_needed(diff: float, sd_diff: float, power: float = POWER, alpha: float = ALPHA) -> int | None:
    """The fewest seeds with which the paired t-test detects a true difference `diff` with `power` at the sd of
    the differences `sd_diff`; None when more than MAX_SEEDS (or the difference is 0)."""
    if sd_diff is None or diff is None or diff == 0.0:
        return None
    if sd_diff == 0.0:
        return 2
    d = abs(diff) / sd_diff
    if paired_power(d, MAX_SEEDS, alpha) < power:
        return None
    lo, hi = 1, 2
    while paired_power(d, hi, alpha) < power:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if paired_power(d, mid, alpha) >= power else (mid, hi)
    return hi


def macro_accuracy(correct: Sequence[Sequence[float]]) -> float:
    """Mean over tasks of each task's mean correctness: the AA of one matrix row, from per-example results."""
    return statistics.fmean(statistics.fmean(v) for v in correct)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # linear interpolation between order statistics (numpy's default), so tiny resample counts still work
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(values_fn: Callable[[list[list[float]]], float], samples: Sequence[Sequence[float]], *,
                 n_resamples: int = 2000, level: float = LEVEL, seed: int = 0) -> dict:
    """Percentile bootstrap over test examples.

    `samples` holds one per-example correctness vector per task; each resample redraws every vector with
    replacement at its own size (stratified by task, so a task's weight in a macro mean never changes) and
    applies `values_fn` to the redrawn vectors. Seeded, so the same call gives the same interval.
    """
    if n_resamples < 1 or any(len(v) == 0 for v in samples):
        raise ValueError("bootstrap_ci needs n_resamples >= 1 and no empty sample vector")
    rng = random.Random(seed)
    stats = sorted(values_fn([rng.choices(list(v), k=len(v)) for v in samples]) for _ in range(n_resamples))
    tail = (1 - level) / 2
    return {"estimate": values_fn([list(v) for v in samples]), "ci": (_percentile(stats, tail), _percentile(stats, 1 - tail)),
            "n_resamples": n_resamples, "level": level, "seed": seed}
