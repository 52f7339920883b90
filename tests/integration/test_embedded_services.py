"""The embedded broker and redis-server: they answer, restart, and never outlive us."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from kafka import KafkaAdminClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.config import Settings, resolve_services
from pipeline.embedded import EmbeddedKafka, EmbeddedRedis, EmbeddedServices
from pipeline.errors import ConfigError

from .conftest import proc_alive

pytestmark = pytest.mark.broker  # the embedded broker itself is under test


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def test_session_services_answer(services: EmbeddedServices) -> None:
    assert all(proc_alive(pid) for pid in services.pids)
    assert redis.Redis.from_url(services.redis_url).ping()
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def test_stop_leaves_no_process() -> None:
    with EmbeddedServices() as embedded:
        pids = embedded.pids
        assert len(pids) == 2 and all(proc_alive(pid) for pid in pids)
    assert not any(proc_alive(pid) for pid in pids)


def test_stop_after_a_failure_inside_the_block() -> None:
    with pytest.raises(RuntimeError), EmbeddedKafka() as kafka:
        pid = kafka.pid
        raise RuntimeError("test failed")
    assert pid is not None and not proc_alive(pid)


def test_children_die_when_the_parent_is_killed() -> None:
    script = (
        "import json, sys, time\n"
        "from pipeline.embedded import EmbeddedServices\n"
        "s = EmbeddedServices().start()\n"
        "print(json.dumps(s.pids), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        pids = json.loads(line)
        assert len(pids) == 2 and all(proc_alive(pid) for pid in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert wait_until(lambda: not any(proc_alive(pid) for pid in pids)), pids
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_redis_restart_keeps_data_and_requires_password() -> None:
    with EmbeddedRedis(persist=True, password="s3cret") as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", b"\x00\x01 value")
        first = server.pid
        server.restart()
        assert server.pid != first and not proc_alive(first)
        assert redis.Redis.from_url(server.url).get("k") == b"\x00\x01 value"
        anonymous = redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            anonymous.get("k")
        directory = server.directory
    assert not directory.exists()


def test_redis_without_persistence_forgets_on_restart() -> None:
    with EmbeddedRedis() as server:
        redis.Redis.from_url(server.url).set("k", "v")
        server.restart()
        assert redis.Redis.from_url(server.url).get("k") is None


def test_resolve_services_uses_given_addresses_and_starts_nothing() -> None:
    settings = Settings(kafka_bootstrap="kafka.example:9092", redis_url="redis://cache:6379/0")
    with resolve_services(settings) as resolved:
        assert resolved.kafka_bootstrap == "kafka.example:9092"
        assert resolved.redis_url == "redis://cache:6379/0"
        assert not resolved.embedded and resolved.pids == ()


@pytest.mark.parametrize(
    "given", [{"kafka_bootstrap": "k:9092"}, {"redis_url": "redis://r:6379/0"}]
)
def test_resolve_services_refuses_half_a_configuration(given: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="set both"), resolve_services(Settings(**given)):
        pass


def test_resolve_services_starts_embedded_in_dev_mode(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("UNLEARN_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("UNLEARN_REDIS_URL", raising=False)
    with caplog.at_level(logging.INFO, logger="pipeline.config"):
        with resolve_services(Settings()) as resolved:
            assert resolved.embedded and len(resolved.pids) == 2
            assert redis.Redis.from_url(resolved.redis_url).ping()
            pids = resolved.pids
    assert not any(proc_alive(pid) for pid in pids)
    lines = [r for r in caplog.records if r.name == "pipeline.config"]
    assert len(lines) == 1 and "embedded" in lines[0].getMessage()
