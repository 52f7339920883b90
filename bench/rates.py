"""Rates from measured durations, defined for every duration a machine can produce.

A fast machine can take a whole backlog in one batch, so the window a rate is measured
over (first batch to last, first send to last commit) can be zero or below the clock's
resolution. A rate over such a window is not a figure: :func:`per_second` returns
``None`` for it, and the report says the window was too short to measure, instead of
dividing by zero or printing an absurd number.
"""

from __future__ import annotations

__all__ = ["MIN_WINDOW_S", "format_rate", "per_second"]

MIN_WINDOW_S = 1e-3
"""Shortest window, in seconds, that a rate is computed over (below it: ``None``)."""


def per_second(count: float, seconds: float) -> float | None:
    """``count / seconds``, or ``None`` when the window is too short to measure.

    Parameters
    ----------
    count : float
        Events (or anything counted) in the window; ``0`` gives ``0.0``.
    seconds : float
        The window's length. Below :data:`MIN_WINDOW_S` (including 0 and negative
        values from clocks of two processes) the rate is undefined.
    """
    if seconds < MIN_WINDOW_S:
        return None
    return count / seconds


def format_rate(rate: float | None, unit: str = "", unmeasured: str = "too fast to measure") -> str:
    """A rate in whole units followed by ``unit``, or ``unmeasured`` (no unit) for None."""
    return unmeasured if rate is None else f"{rate:.0f}{unit}"
