"""How the worker meets the broker: the faust app's options, the intake consumer's.

The faust app (:func:`new_app`) and the intake's aiokafka consumer
(:func:`consumer_config`) are configured alike: the same timeouts, fetch sizes and wait,
and security settings (:class:`~pipeline.config.Settings`).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any

import faust

from pipeline.config import Settings
from workers.transport import App

__all__ = ["FAST_TIMEOUTS", "consumer_config", "new_app", "topic_partitions"]

FAST_TIMEOUTS = {
    "broker_session_timeout": 6.0,
    "broker_heartbeat_interval": 1.0,
    "broker_rebalance_timeout": 10.0,
    "broker_commit_interval": 0.5,
    "broker_request_timeout": 20.0,
}


def new_app(app_id: str, settings: Settings, kafka_bootstrap: str) -> App:
    """The worker's faust app: raw keys and values, in-memory tables, acks from all
    replicas, notices sent in a few produce requests."""
    timeouts = FAST_TIMEOUTS if settings.broker_timeouts == "fast" else {}
    return App(
        app_id,
        fetch_max_wait=settings.fetch_max_wait,
        broker=[f"kafka://{host}" for host in kafka_bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        # faust makes a data directory even with in-memory tables: not in the cwd
        datadir=_faust_dir(),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=max(settings.max_event_bytes * 2, 1_048_576),
        # a batch's receipts and tombstones leave in a few produce requests, not one each
        producer_linger=0.002,
        producer_max_batch_size=1_048_576,
        consumer_max_fetch_size=max(settings.max_event_bytes * 2, 4_194_304),
        **timeouts,
    )


def topic_partitions(bootstrap: str, topic: str, settings: Settings) -> int:
    """Partitions of ``topic`` as the broker has them (for tombstones' partitions)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **settings.kafka_config())
    try:
        found = consumer.partitions_for_topic(topic)
        return len(found) if found else settings.partitions
    finally:
        consumer.close()


def consumer_config(app: faust.App, settings: Settings, name: str) -> dict[str, Any]:
    """aiokafka consumer options matching the faust app's consumer (timeouts, fetch
    sizes and wait, security), for a :class:`~workers.consumer.BatchConsumer` called
    ``name`` (its client id's suffix)."""
    conf = app.conf
    config: dict[str, Any] = {
        "fetch_max_wait_ms": round(settings.fetch_max_wait * 1000),
        "max_partition_fetch_bytes": conf.consumer_max_fetch_size,
        "session_timeout_ms": round(conf.broker_session_timeout * 1000),
        "heartbeat_interval_ms": round(conf.broker_heartbeat_interval * 1000),
        "rebalance_timeout_ms": round(conf.broker_rebalance_timeout * 1000),
        "request_timeout_ms": round(conf.broker_request_timeout * 1000),
        "client_id": f"{conf.broker_client_id}-{name}",
    }
    security = settings.kafka_config()
    config["security_protocol"] = security.pop("security_protocol")
    cafile = security.pop("ssl_cafile", None)
    if config["security_protocol"] in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        config["ssl_context"] = create_ssl_context(cafile=cafile)
    config.update(security)  # sasl_mechanism, sasl_plain_username, sasl_plain_password
    return config


def _faust_dir() -> str:
    """A data directory of this process's own for faust (unused: tables are in memory)."""
    path = tempfile.mkdtemp(prefix="unlearn-faust-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _credentials(settings: Settings) -> Any:
    """faust's broker credentials from the settings (None: plaintext)."""
    config = settings.kafka_config()
    protocol = config.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    import ssl

    context = ssl.create_default_context(cafile=config.get("ssl_cafile"))
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=config["sasl_plain_username"],
        password=config["sasl_plain_password"],
        mechanism=config["sasl_mechanism"],
        ssl_context=context if protocol == "SASL_SSL" else None,
    )
