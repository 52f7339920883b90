"""Riding out an outage of Redis: which errors are transient, how long to wait, what to log.

A worker whose Redis is unreachable (restarting, failing over, loading its AOF) must not
dead-letter the batch it holds (that would lose deletions) nor die: it retries the whole
batch with capped exponential backoff, and commits no offset until the batch is applied.
The applier makes the retry safe (a request whose receipt is final is not applied again;
a half-applied engine is reloaded from Redis).

* :func:`is_transient`: ``redis.exceptions.ConnectionError`` (which includes
  ``BusyLoadingError``) and ``redis.exceptions.TimeoutError``, raised or as the cause.
* :class:`Backoff`: the delays, ``initial * factor**n`` capped at ``cap``, with optional
  jitter (downwards only, so the cap holds).
* :class:`Outage`: one warning when Redis becomes unreachable (and one per kind of batch
  held back by it), a reminder every ``remind`` seconds while it stays so, one line when
  it is back: never a traceback per try.
* :func:`retry_transient`: runs an async callable until it gets through.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import redis

__all__ = ["TRANSIENT", "Backoff", "Outage", "is_transient", "retry_transient"]

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # also BusyLoadingError (Redis loading its data)
    redis.exceptions.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` (or the exception it was raised from) means Redis is unreachable."""
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            return False
        if isinstance(seen, TRANSIENT):
            return True
        seen = seen.__cause__
    return False


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: ``min(cap, initial * factor**n)`` before try ``n + 2``.

    ``jitter`` in [0, 1) shortens each delay by a random fraction up to ``jitter`` (so
    that several workers do not all come back at the same instant); the cap still holds.
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 5.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.factor >= 1 and self.cap >= self.initial):
            msg = f"need initial > 0, factor >= 1, cap >= initial: {self}"
            raise ValueError(msg)
        if not 0 <= self.jitter < 1:
            msg = f"jitter must be in [0, 1): {self.jitter}"
            raise ValueError(msg)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delays, without end."""
        draw = (rng or random.Random()).random  # noqa: S311 - jitter, not secrets
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * draw()) if self.jitter else delay
            delay = min(self.cap, delay * self.factor)


class Outage:
    """Logs one outage of Redis as few clear lines, whoever (agents, timers) runs into it.

    Logged: the first failure of an outage, and the first of each kind of work that is
    retried (a batch: ``retry_in`` given), with what happens to it; a periodic task that
    is skipped is logged only if it is the first to fail. Later failures only count, but
    for a reminder every ``remind`` seconds; the first success ends the outage (one line).

    Parameters
    ----------
    log : logging.Logger
    remind : float
        Seconds between "still unreachable" reminders while the outage lasts.
    clock : callable
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        log: logging.Logger,
        remind: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.remind, self.clock = log, remind, clock
        self.since: float | None = None
        self.tries = 0
        self._noted: set[str] = set()
        self._reminded = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException, doing: str, retry_in: float | None = None) -> None:
        """Note a failed try; log the outage's first, each retried work's first, reminders."""
        now = self.clock()
        self.tries += 1
        if retry_in is None:
            then = f"{doing} skipped until it is back"
        else:
            then = (
                f"retrying {doing} in {retry_in:.1f} s (capped exponential backoff); "
                "its offsets are not committed until it is applied"
            )
        first = self.since is None
        if self.since is None:
            self.since = self._reminded = now
        since = self.since
        if doing not in self._noted and (first or retry_in is not None):
            self._noted.add(doing)
            self.log.warning("Redis is unreachable (%s: %s); %s", type(exc).__name__, exc, then)
        elif now - self._reminded >= self.remind:
            self._reminded = now
            self.log.warning(
                "Redis still unreachable after %.0f s (%d failed tries; last: %s: %s)",
                now - since,
                self.tries,
                type(exc).__name__,
                exc,
            )

    def recovered(self) -> None:
        """Note a successful use of Redis; log the end of an outage if there was one."""
        if self.since is not None:
            self.log.warning(
                "Redis is reachable again after %.1f s (%d failed tries)",
                self.clock() - self.since,
                self.tries,
            )
            self.since, self.tries = None, 0
            self._noted.clear()

    @contextmanager
    def tolerated(self, doing: str) -> Iterator[None]:
        """Run a periodic task: a transient error skips it (noted), anything else raises."""
        try:
            yield
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.failed(exc, doing)
        else:
            self.recovered()


async def retry_transient(
    work: Callable[[], Awaitable[T]],
    doing: str,
    outage: Outage,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await ``work()`` until it does not fail with a transient error; return its result.

    Any other exception propagates. Nothing is given up: a batch whose offsets are not
    committed waits for Redis however long it takes (the consumer keeps its heartbeat).
    """
    delays = (backoff or Backoff()).delays()
    while True:
        try:
            result = await work()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = next(delays)
            outage.failed(exc, doing, delay)
            await sleep(delay)
            continue
        outage.recovered()
        return result
