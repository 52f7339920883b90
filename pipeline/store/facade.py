"""One handle on all the Redis state: registry, records, receipts, checkpoints.

``Store.from_url(url)`` (or ``Store.from_settings(settings)``) connects with
``decode_responses=False`` (coefficients are raw bytes) and shares one connection pool
between the four parts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import redis

from pipeline.errors import ConfigError
from pipeline.store.checkpoints import CheckpointStore
from pipeline.store.keys import DEFAULT_NAMESPACE, KeySpace
from pipeline.store.models import ModelRegistry
from pipeline.store.receipts import DEFAULT_LEGAL_DEADLINE, ReceiptStore
from pipeline.store.records import RecordStore
from pipeline.store.suppression import DEFAULT_RETENTION, Suppressions
from pipeline.store.wire import CommandPacker

if TYPE_CHECKING:
    from pipeline.config import Settings

__all__ = ["Store", "connect"]

_PACKER = CommandPacker()  # stateless: one for every connection


def connect(url: str, *, cluster: bool = False, **kwargs: Any) -> redis.Redis:
    """A Redis client for ``url`` that returns bytes, as the store needs.

    Parameters
    ----------
    url : str
        ``redis://`` or ``rediss://``; for a cluster, any node's address.
    cluster : bool
        Connect to a Redis Cluster (``UNLEARN_REDIS_CLUSTER``): a
        :class:`redis.cluster.RedisCluster` that routes each key to its slot. Every
        transaction the store runs touches one model's keys, which share a hash tag.
    **kwargs
        More client options (credentials, TLS, timeouts).

    Raises
    ------
    ConfigError
        ``decode_responses=True`` was asked for.
    """
    if kwargs.get("decode_responses"):
        msg = "the state store reads raw bytes: do not pass decode_responses=True"
        raise ConfigError(msg)
    if cluster:
        from redis.cluster import RedisCluster

        client: Any = RedisCluster.from_url(url, **kwargs)  # takes no command_packer
        return cast("redis.Redis", client)
    return redis.Redis.from_url(url, **{"command_packer": _PACKER, **kwargs})


class Store:
    """The pipeline's Redis state.

    Parameters
    ----------
    client : redis.Redis
        Must not decode responses.
    namespace : str
        Key prefix (``unlearn``); tests use a unique one.
    legal_deadline : timedelta
        Time allowed for a deletion (receipts' ``due_at``).
    retention : timedelta
        How long receipts and suppressions are kept (24 months by default).

    Attributes
    ----------
    models : ModelRegistry
    records : RecordStore
    receipts : ReceiptStore
    checkpoints : CheckpointStore
    suppressions : Suppressions
    keys : KeySpace
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = DEFAULT_NAMESPACE,
        legal_deadline: timedelta = DEFAULT_LEGAL_DEADLINE,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        pool = getattr(client, "connection_pool", None)
        if getattr(pool, "connection_kwargs", {}).get("decode_responses"):
            msg = "the state store reads raw bytes: use a client with decode_responses=False"
            raise ConfigError(msg)
        self.client = client
        self.keys = KeySpace(namespace)
        self.models = ModelRegistry(client, self.keys, legal_deadline, retention)
        self.records = RecordStore(client, self.keys)
        self.receipts = ReceiptStore(client, self.keys, legal_deadline, retention)
        self.checkpoints = CheckpointStore(client, self.keys)
        self.suppressions = Suppressions(client, self.keys, retention)

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str = DEFAULT_NAMESPACE,
        legal_deadline: timedelta = DEFAULT_LEGAL_DEADLINE,
        retention: timedelta = DEFAULT_RETENTION,
        **redis_kwargs: Any,
    ) -> Store:
        """Connect to ``url`` (extra keyword arguments go to ``redis.Redis.from_url``)."""
        return cls(connect(url, **redis_kwargs), namespace, legal_deadline, retention)

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str | None = None) -> Store:
        """Connect as ``settings`` say (credentials, TLS, namespace, deadline)."""
        url = redis_url or settings.redis_url
        if not url:
            msg = "no Redis URL: set UNLEARN_REDIS_URL or use resolve_services(settings)"
            raise ConfigError(msg)
        return cls(
            connect(url, cluster=settings.redis_cluster, **settings.redis_kwargs()),
            settings.key_namespace,
            settings.legal_deadline,
            settings.receipt_retention,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
