"""Per-test names over the session's real Tansu broker and redis-server.

The session fixture ``services`` (one broker, one redis-server for the whole run) lives in
``tests/conftest.py``, shared with the end-to-end tests.

Each test gets its own topic prefix and Redis key namespace, so tests never see each
other's data. A missing binary is a failure that says how to install it, never a skip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import redis

from pipeline.embedded import EmbeddedServices
from pipeline.store import Store
from pipeline.topics import Topics, ensure_topics


def proc_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie, read straight from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def test_id(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    return f"t_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(services: EmbeddedServices) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()


@pytest.fixture
def store(redis_client: redis.Redis, test_id: str) -> Store:
    return Store(redis_client, namespace=test_id)


@pytest.fixture
def topics(services: EmbeddedServices, test_id: str) -> Topics:
    names = Topics(prefix=f"{test_id}.")
    ensure_topics(services.kafka_bootstrap, names, partitions=3)
    return names
