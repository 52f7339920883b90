"""pipeline.retry: which errors are transient, the backoff schedule, the outage log."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
import redis

from pipeline.retry import Backoff, Outage, is_transient, retry_transient


def take(it, n: int) -> list[float]:
    return [next(it) for _ in range(n)]


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = take(Backoff(initial=0.1, factor=2.0, cap=5.0, jitter=0.0).delays(), 9)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_jitter_only_shortens_and_keeps_the_cap() -> None:
    plain = take(Backoff(jitter=0.0).delays(), 40)
    jittered = take(Backoff(jitter=0.2).delays(random.Random(3)), 40)
    for d, j in zip(plain, jittered, strict=True):
        assert 0.8 * d <= j <= d
    assert max(jittered) <= 5.0
    assert jittered != plain  # the jitter is there


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0.0}, {"factor": 0.5}, {"cap": 0.01}, {"jitter": 1.0}]
)
def test_backoff_refuses_nonsense(kwargs) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_transient_errors() -> None:
    assert is_transient(redis.exceptions.ConnectionError("refused"))
    assert is_transient(redis.exceptions.BusyLoadingError("loading"))
    assert is_transient(redis.exceptions.TimeoutError("timeout"))
    try:
        try:
            raise redis.exceptions.ConnectionError("refused")
        except redis.exceptions.ConnectionError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not is_transient(redis.exceptions.WatchError())
    assert not is_transient(ValueError("a bug"))


def test_retry_until_redis_is_back_logs_one_line_each_way(caplog) -> None:
    log = logging.getLogger("test.retry")
    outage = Outage(log)
    calls = []

    async def work() -> str:
        calls.append(1)
        if len(calls) <= 5:
            raise redis.exceptions.ConnectionError("Error 111 connecting. Connection refused.")
        return "applied"

    backoff = Backoff(initial=0.001, cap=0.004, jitter=0.0)
    with caplog.at_level(logging.INFO, logger="test.retry"):
        got = asyncio.run(retry_transient(work, "the deletion batch", outage, backoff))
    assert got == "applied" and len(calls) == 6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis is unreachable (ConnectionError: Error 111")
    assert "retrying the deletion batch in 0.0 s" in lines[0]
    assert lines[1].startswith("Redis is reachable again after") and "(5 failed tries)" in lines[1]
    assert not outage.down


def test_other_errors_are_not_retried() -> None:
    calls = []

    async def work() -> None:
        calls.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        asyncio.run(retry_transient(work, "the deletion batch", Outage(logging.getLogger("t"))))
    assert len(calls) == 1


def test_outage_reminds_every_so_often_and_notes_each_kind_of_work_once(caplog) -> None:
    now = [0.0]
    outage = Outage(logging.getLogger("test.outage"), remind=30.0, clock=lambda: now[0])
    exc = redis.exceptions.ConnectionError("refused")
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        for t in range(0, 100):  # a failed try every second for 100 s
            now[0] = float(t)
            outage.failed(exc, "the deletion batch", 1.0)
            with outage.tolerated("the status heartbeat"):
                raise exc
        now[0] = 100.0
        with outage.tolerated("the status heartbeat"):
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert sum("Redis is unreachable" in m for m in lines) == 1  # the batch came first
    assert "retrying the deletion batch in 1.0 s" in lines[0]
    assert sum("still unreachable" in m for m in lines) == 3  # at 30, 60, 90 s
    assert lines[-1] == "Redis is reachable again after 100.0 s (200 failed tries)"
    with pytest.raises(KeyError), outage.tolerated("the status heartbeat"):
        raise KeyError("a bug")

    # a new outage: found by a periodic task first, then a batch held back by it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        for doing in ("the status heartbeat", "merging refits"):
            with outage.tolerated(doing):
                raise exc
        outage.failed(exc, "the deletion batch", 0.1)
        outage.failed(exc, "the record batch", 0.1)
        outage.failed(exc, "the deletion batch", 0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].endswith("the status heartbeat skipped until it is back")
    assert "retrying the deletion batch in 0.1 s" in lines[1]
    assert "retrying the record batch in 0.1 s" in lines[2]
