"""The status page's parts that need no server: scraping maths and the served files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pipeline.dashboard.scrape import Scrape, StreamWindow, histogram_quantile
from pipeline.dashboard.server import STATIC
from pipeline.metrics import Metrics

pytestmark = pytest.mark.unit


def _exposition(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = {0.1: 0.0, 0.5: 10.0, 1.0: 20.0, math.inf: 20.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.99, {1.0: 0.0, math.inf: 5.0}) == 1.0  # in +Inf: largest bound
    assert histogram_quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None


def test_the_window_turns_counters_into_rates_across_a_restart() -> None:
    before, after = Metrics(), Metrics()
    before.applied("fisher", 10, 0)
    window = StreamWindow(quantile_window=30.0)
    first = window.add(100.0, {"w": Scrape.parse(_exposition(before))})
    assert first["deletions_per_s"] is None  # one scrape: no rate yet
    before.applied("fisher", 20, 0)
    before.dead_lettered("t", "schema")
    assert window.add(102.0, {"w": Scrape.parse(_exposition(before))})["deletions_per_s"] == 10
    after.applied("influence", 4, 0)  # the worker restarted: its counter starts over
    point = window.add(104.0, {"w": Scrape.parse(_exposition(after))})
    assert point["deletions_per_s"] == 2
    assert window.totals()["deletions_applied"] == {"all": 4.0}
    assert [p["dead_letters"] for p in window.points()][1] == {"schema": 1.0}


def test_latency_percentiles_count_a_series_born_between_two_scrapes() -> None:
    from datetime import UTC, datetime, timedelta

    m = Metrics()
    window = StreamWindow(quantile_window=30.0)
    window.add(0.0, {"w": Scrape.parse(_exposition(m))})
    now = datetime.now(UTC)
    m.latencies("deletions", now, [now - timedelta(seconds=0.3)] * 3)
    point = window.add(1.0, {"w": Scrape.parse(_exposition(m))})
    assert 0.25 < point["latency"]["p50"] <= 0.5
    quiet = window.add(40.0, {"w": Scrape.parse(_exposition(m))})  # past the window
    assert quiet["latency"]["p50"] is None
    assert window.points()[1]["latency"]["p50"] == point["latency"]["p50"]  # history kept


def test_the_page_loads_nothing_from_elsewhere_and_ships_its_library_license() -> None:
    files = {p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*") if p.is_file()}
    assert {"index.html", "dashboard.js", "dashboard.css"} <= set(files)
    vendor = Path("vendor/uplot")
    assert {str(vendor / n) for n in ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE")} <= set(
        files
    )
    assert "MIT License" in files[str(vendor / "LICENSE")].read_text()
    page = files["index.html"].read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert ref.startswith("/static/") or ref.startswith("data:"), ref
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert not re.search(r"https?://(?!127\.0\.0\.1:)", files[name].read_text()), name
    assert "innerHTML" not in files["dashboard.js"].read_text()  # text goes in as text
