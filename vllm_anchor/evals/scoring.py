"""RULER-style scoring and confidence intervals.

``string_match_all``: the share of the reference answers found (case-insensitive substring) in
the prediction, per sample; ``string_match_part``: 1 if any reference is found; ``first_line``
(hard-needle): ``string_match_all`` on the first non-empty line of the prediction. A task's score is
the mean over its samples; its 95% interval is Wilson's when every per-sample score is 0 or 1,
else a percentile bootstrap (fixed seed).
"""
from __future__ import annotations

import math
import random
import re

_CTRL = re.compile(r"[\x00-\x1f]")


def postprocess(pred: str) -> str:
    """RULER's postprocess_pred: strip, control characters to newlines."""
    return _CTRL.sub("\n", pred.strip()).strip()


def string_match_all(pred: str, refs: list[str]) -> float:
    pred = postprocess(pred).lower()
    return sum(1.0 for r in refs if r.lower() in pred) / len(refs)


def string_match_part(pred: str, refs: list[str]) -> float:
    pred = postprocess(pred).lower()
    return 1.0 if any(r.lower() in pred for r in refs) else 0.0


def score(pred: str, refs: list[str], metric: str = "all") -> float:
    """``all`` / ``part`` as RULER; ``first_line``: ``all`` on the prediction's first non-empty
    line only (for confusable needles, where a model that goes on to list every candidate
    would otherwise get credit)."""
    if metric == "first_line":
        lines = [ln for ln in postprocess(pred).split("\n") if ln.strip()]
        return string_match_all(lines[0] if lines else "", refs)
    if metric == "all":
        return string_match_all(pred, refs)
    if metric == "part":
        return string_match_part(pred, refs)
    raise ValueError(f"unknown metric {metric!r}")


def wilson(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # the bounds are exactly 0 / 1 at p = 0 / 1 (the formula leaves rounding dust there)
    return (0.0 if successes <= 0 else lo, 1.0 if successes >= n else hi)


def bootstrap(values: list[float], reps: int = 2000, seed: int = 0,
              alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    if not values:
        return (0.0, 1.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    lo = means[int(math.floor(alpha / 2 * (reps - 1)))]
    hi = means[int(math.ceil((1 - alpha / 2) * (reps - 1)))]
    return (lo, hi)


def summarize(values: list[float], seed: int = 0) -> dict:
    """Mean, n and a 95% interval (Wilson for 0/1 scores, else bootstrap)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None, "ci_method": None}
    mean = sum(values) / n
    if all(v in (0.0, 1.0) for v in values):
        ci, method = wilson(sum(values), n), "wilson"
    else:
        ci, method = bootstrap(values, seed=seed), "bootstrap"
    return {"n": n, "mean": mean, "ci95": [ci[0], ci[1]], "ci_method": method}


def paired_bootstrap_diff(a: list[float], b: list[float], reps: int = 2000,
                          seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired samples with a percentile bootstrap 95% interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired scores need equal, non-zero lengths")
    d = [x - y for x, y in zip(a, b)]
    lo, hi = bootstrap(d, reps=reps, seed=seed)
    return {"mean": sum(d) / len(d), "ci95": [lo, hi], "n": len(d)}
