"""Intervals for the study's figures: the mean of a few seeds and paired differences.

With five seeds the normal quantile (1.96) understates the interval by a third, so the
interval uses Student's t, whose quantile is found here by integrating its density (the
bench carries no scipy).
"""

from __future__ import annotations

import functools
import math

import numpy as np


@functools.cache  # a summary asks for the same few quantiles ~100 times
def t_quantile(probability: float, df: int) -> float:
    """Return the ``probability`` quantile (> 0.5) of Student's t with ``df`` degrees of freedom.

    The density is integrated by the trapezoid rule from 0 on a grid fine enough that the
    result matches the tables to three decimals (df 4: 2.776, df 2: 4.303).
    """
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, 200.0, 2_000_001)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
    steps = (density[1:] + density[:-1]) / 2 * (grid[1] - grid[0])
    cumulative = 0.5 + np.concatenate([[0.0], np.cumsum(steps)])
    return float(np.interp(probability, cumulative, grid))


def interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and ``confidence`` t-interval half-width of ``values`` (one per seed).

    One value has no interval: its half-width is ``None``.
    """
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return {"mean": mean, "half_width": None, "n": len(data)}
    spread = float(data.std(ddof=1)) / math.sqrt(len(data))
    half = t_quantile(0.5 + confidence / 2, len(data) - 1) * spread
    return {"mean": mean, "half_width": half, "n": len(data)}


def paired(first: list[float], second: list[float], confidence: float = 0.95) -> dict:
    """Interval of ``first - second`` over paired seeds (the same world sample and start)."""
    if len(first) != len(second):
        raise ValueError(f"paired: {len(first)} values against {len(second)}")
    return interval([a - b for a, b in zip(first, second, strict=True)], confidence)


def show(stats: dict, digits: int = 2) -> str:
    """``0.63 ± 0.05`` (or the mean alone when there is no interval)."""
    if stats["half_width"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['half_width']:.{digits}f}"
