"""Benchmark rates are defined however fast the machine takes a backlog."""

from __future__ import annotations

import json

import pytest

from bench.pipeline import ceiling_figures
from bench.rates import MIN_WINDOW_S, format_rate, per_second


def test_a_backlog_taken_in_one_batch_has_no_rate_and_says_so():
    # a fast machine: the no-op agent's first batch holds the whole backlog
    figures = ceiling_figures({"events": 5000, "first_batch": 5000, "seconds": 0.0})
    assert figures["events_per_second"] is None
    assert format_rate(figures["events_per_second"]) == "too fast to measure"
    json.dumps(figures, allow_nan=False)  # still valid JSON for `unlearn bench --json`


def test_a_backlog_taken_in_several_batches_has_its_rate():
    figures = ceiling_figures({"events": 5000, "first_batch": 1000, "seconds": 0.5})
    assert figures["events_per_second"] == pytest.approx(8000.0)
    assert format_rate(figures["events_per_second"]) == "8000"


@pytest.mark.parametrize("seconds", [0.0, MIN_WINDOW_S / 10, -0.002])
def test_windows_below_the_clock_resolution_or_negative_give_no_rate(seconds):
    assert per_second(100, seconds) is None


def test_nothing_counted_over_a_real_window_is_a_zero_rate():
    assert per_second(0, 2.0) == 0.0
