"""What a study may claim from two methods' paired results: a statement "A better than B" only where
the 95% interval of the mean paired difference excludes zero, "not separable" otherwise.

The differences are paired by seed (first minus second, the same seed's runs). With n >= 2 seeds
the interval is the t interval of their mean, mean ± t(0.975, n - 1) · s / sqrt(n); with one seed
there is no spread to judge a difference by, so nothing is claimed: "not separable (n = 1)".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
NOT_SEPARABLE = "not separable"


@dataclass(frozen=True)
class PairedDifference:
    n: int
    mean: float
    std: float  # sample standard deviation of the per-seed differences (nan for n < 2)
    low: float  # the t interval of the mean (nan for n < 2)
    high: float

    @property
    def separable(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return asdict(self)


def paired_difference(differences: list[float], level: float = LEVEL) -> PairedDifference:
    """The mean of the per-seed differences and its t interval (nan bounds below two seeds)."""
    values = np.asarray([d for d in differences if d is not None and math.isfinite(d)], dtype=float)
    n = len(values)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if n == 1:
        return PairedDifference(1, mean, math.nan, math.nan, math.nan)
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return PairedDifference(n, mean, std, mean - half, mean + half)


def verdict(first: str, second: str, difference: PairedDifference, better: str = "better") -> str:
    """"<first> better than <second>" (or the reverse) when the interval of first minus second
    lies below (above) zero, for a figure where lower is better; ``better`` words the claim
    ("lower" for a figure whose lower value is not always better). Else "not separable"."""
    if difference.n < 2:
        return f"{NOT_SEPARABLE} (n = {difference.n})"
    if difference.high < 0:
        return f"{first} {better} than {second}"
    if difference.low > 0:
        return f"{second} {better} than {first}"
    return NOT_SEPARABLE
