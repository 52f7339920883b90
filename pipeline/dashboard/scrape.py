"""The stream as the page plots it: the processes' ``/metrics``, scraped and turned into rates.

The page has no Prometheus to ask, so :class:`StreamWindow` does the little of it that the
page needs. Each refresh scrapes every target (the workers found through their status
keys, plus any given), keeps the samples the page plots, and appends one point per
series to a window of the last ``span`` seconds:

* deletions applied per second: the increase of ``unlearn_deletions_applied_total``
  (all methods) between two scrapes over the time between them, summed over targets;
  a counter that went down (the process restarted) counts from zero, as ``rate()`` does;
* latency from event to published version, p50, p95 and p99: Prometheus's
  ``histogram_quantile`` (linear within a bucket) over the increase of
  ``unlearn_update_latency_seconds_bucket`` within the last ``quantile_window`` seconds,
  summed over agents and targets; no point while nothing was published;
* dead letters by reason (``unlearn_events_dead_lettered_total``, summed over topics) and
  consumer lag by topic (``unlearn_consumer_lag_records``), as they stand;
* retrain decisions by reason and outcome (``unlearn_retrain_triggers_total``) and
  refits run by reason (``unlearn_retrains_total``, the retrainer's), as they stand.

A target that does not answer is reported with its error, and its series simply miss
from the sums until it answers again.
"""

from __future__ import annotations

import math
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "StreamWindow", "histogram_quantile", "scrape"]

QUANTILES = (0.5, 0.95, 0.99)
_DELETIONS = "unlearn_deletions_applied_total"
_LATENCY = "unlearn_update_latency_seconds_bucket"
_DEAD = "unlearn_events_dead_lettered_total"
_LAG = "unlearn_consumer_lag_records"
_TRIGGERS = "unlearn_retrain_triggers_total"
_RETRAINS = "unlearn_retrains_total"


@dataclass
class Scrape:
    """The samples of one target that the page uses (all sums over the other labels).

    Attributes
    ----------
    deletions : float
        Records removed, every method.
    latency_buckets : dict of float to float
        Cumulative count per upper bound ``le`` (``inf`` included).
    dead_letters : dict of str to float
        By reason code.
    lag : dict of str to float
        By topic.
    triggers : dict of str to float
        By ``"<reason>/<outcome>"``.
    retrains : dict of str to float
        By reason.
    """

    deletions: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)
    dead_letters: dict[str, float] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    triggers: dict[str, float] = field(default_factory=dict)
    retrains: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        """The samples of a Prometheus text exposition."""
        out = cls()

        def add(into: dict[Any, float], key: Any, value: float) -> None:
            into[key] = into.get(key, 0.0) + value

        for family in text_string_to_metric_families(text):
            for s in family.samples:
                name, labels, value = s.name, s.labels, float(s.value)
                if name == _DELETIONS:
                    out.deletions += value
                elif name == _LATENCY:
                    add(out.latency_buckets, float(labels["le"]), value)
                elif name == _DEAD:
                    add(out.dead_letters, labels["reason"], value)
                elif name == _LAG:
                    add(out.lag, labels["topic"], value)
                elif name == _TRIGGERS:
                    add(out.triggers, f"{labels['reason']}/{labels['outcome']}", value)
                elif name == _RETRAINS:
                    add(out.retrains, labels["reason"], value)
        return out


def scrape(url: str, timeout: float = 2.0) -> Scrape:
    """Read and parse one ``/metrics`` (raises ``OSError`` when it does not answer)."""
    if not url.startswith(("http://", "https://")):
        msg = f"metrics target {url!r} is not an http(s) URL"
        raise ValueError(msg)
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - checked above
        return Scrape.parse(reply.read().decode("utf-8", errors="replace"))


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile``: ``q`` of cumulative ``buckets`` (le -> count).

    Linear interpolation within the bucket that holds the rank; the ``+Inf`` bucket
    answers with the largest finite bound. ``None`` when the buckets count nothing.

    Examples
    --------
    >>> histogram_quantile(0.5, {1.0: 0, 2.0: 10, math.inf: 10})
    1.5
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def _increase(new: float, old: float) -> float:
    """A counter's increase; a counter that went down restarted from zero."""
    return new - old if new >= old else new


class StreamWindow:
    """The last ``span`` seconds of the stream's series, one point per :meth:`add`.

    Parameters
    ----------
    span : float
        Seconds of history kept (and plotted).
    quantile_window : float
        Seconds over which latency percentiles are computed at each point.
    """

    def __init__(self, span: float = 600.0, quantile_window: float = 30.0) -> None:
        self.span = span
        self.quantile_window = quantile_window
        self._previous: dict[str, tuple[float, Scrape]] = {}
        self._points: deque[dict[str, Any]] = deque()
        self._latency: deque[tuple[float, dict[float, float]]] = deque()
        self.latest: dict[str, Scrape] = {}

    def add(self, at: float, scrapes: Mapping[str, Scrape]) -> dict[str, Any]:
        """Append the point of the scrapes taken at ``at`` (by target); return it."""
        applied, elapsed = 0.0, 0.0
        latency_inc: dict[float, float] = {}
        for target, now in scrapes.items():
            before = self._previous.get(target)
            if before is None:
                continue
            t0, old = before
            elapsed = max(elapsed, at - t0)
            applied += _increase(now.deletions, old.deletions)
            for le, count in now.latency_buckets.items():
                # a series born since the last scrape of a known target counts from 0
                inc = _increase(count, old.latency_buckets.get(le, 0.0))
                latency_inc[le] = latency_inc.get(le, 0.0) + inc
        self._previous = {t: (at, s) for t, s in scrapes.items()}
        self.latest = dict(scrapes)
        self._latency.append((at, latency_inc))
        while self._latency and self._latency[0][0] <= at - self.quantile_window:
            self._latency.popleft()
        window: dict[float, float] = {}
        for _t, increments in self._latency:
            for le, count in increments.items():
                window[le] = window.get(le, 0.0) + count
        point = {
            "t": at,
            "deletions_per_s": applied / elapsed if elapsed > 0 else None,
            "latency": {f"p{round(q * 100)}": histogram_quantile(q, window) for q in QUANTILES},
            "dead_letters": _sum(s.dead_letters for s in scrapes.values()),
            "lag": _sum(s.lag for s in scrapes.values()),
        }
        self._points.append(point)
        while self._points and self._points[0]["t"] < at - self.span:
            self._points.popleft()
        return point

    def points(self) -> list[dict[str, Any]]:
        """The kept points, oldest first."""
        return list(self._points)

    def totals(self) -> dict[str, dict[str, float]]:
        """Counters as they stand, summed over the targets that answered last."""
        scrapes = self.latest.values()
        return {
            "dead_letters": _sum(s.dead_letters for s in scrapes),
            "lag": _sum(s.lag for s in scrapes),
            "retrain_triggers": _sum(s.triggers for s in scrapes),
            "retrains": _sum(s.retrains for s in scrapes),
            "deletions_applied": {"all": sum(s.deletions for s in scrapes)},
        }


def _sum(maps: Iterable[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in maps:
        for key, value in m.items():
            out[key] = out.get(key, 0.0) + value
    return dict(sorted(out.items()))
