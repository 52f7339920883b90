"""Topic names and policies (DESIGN section 4), under an optional prefix.

``Topics(prefix="t_abc_").deletions == "t_abc_unlearn.deletions"``. :func:`ensure_topics`
creates the missing ones with their cleanup policy (compacted for records and model
updates, so erased features and superseded versions leave the log; long retention for
deletions, the audit trail).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["DELETIONS_RETENTION_MS", "Topics", "ensure_topics", "record_key"]

DAY_MS = 24 * 3600 * 1000
DELETIONS_RETENTION_MS = 400 * DAY_MS
"""Deletion requests are kept 400 days: longer than any legal deadline, for audits."""
MODEL_OPS_RETENTION_MS = 7 * DAY_MS
"""Routed requests carry the requests (subject ids): kept a week, as dead letters are;
the owner applies them within seconds, the rest is slack for an outage."""
DEAD_LETTER_RETENTION_MS = 7 * DAY_MS
"""A dead letter carries the rejected message's bytes, which may be a person's data (a
``RecordAdded`` refused for its label, say). They leave the log within the bound an erased
record's features leave ``unlearn.records`` (``max.compaction.lag.ms``), so an erasure's
promise holds there too; operators read and fix dead letters within the week."""
RECORDS_ERASURE = {
    "segment.ms": str(DAY_MS),
    "max.compaction.lag.ms": str(7 * DAY_MS),
    "delete.retention.ms": str(DAY_MS),
}
"""How soon an erased record's features leave ``unlearn.records``: the log cleaner never
compacts the active segment, so segments roll daily; ``max.compaction.lag.ms`` makes the
cleaner compact a segment holding a tombstone within 7 days (Kafka's default is never),
and the tombstone itself goes a day after. Erasure from the log thus takes at most about
8 days, inside the 30-day legal deadline (``UNLEARN_LEGAL_DEADLINE_DAYS``)."""


def record_key(model_id: str, record_id: str) -> bytes:
    """Key of a record on the compacted ``unlearn.records`` topic: ``model/record``.

    Compaction keeps the last value per key within a partition, and records are
    partitioned by model: keyed by record id alone, two models in one partition that
    share a record id would compact each other's records away (a tombstone for ``r1`` of
    model A would drop model B's ``r1``). Model ids cannot contain ``/``, so the key is
    unambiguous.
    """
    return f"{model_id}/{record_id}".encode()


@dataclass(frozen=True)
class Topics:
    """The pipeline's topic names.

    Parameters
    ----------
    prefix : str
        Prepended to every name (``UNLEARN_TOPIC_PREFIX``); tests use a unique one.
    """

    prefix: str = ""

    @property
    def records(self) -> str:
        return f"{self.prefix}unlearn.records"

    @property
    def deletions(self) -> str:
        return f"{self.prefix}unlearn.deletions"

    @property
    def model_ops(self) -> str:
        """Internal: deletion requests routed to one model, keyed and partitioned by model."""
        return f"{self.prefix}unlearn.model-ops"

    @property
    def model_updates(self) -> str:
        return f"{self.prefix}unlearn.model-updates"

    @property
    def retrain(self) -> str:
        return f"{self.prefix}unlearn.retrain"

    @property
    def receipts(self) -> str:
        return f"{self.prefix}unlearn.receipts"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}unlearn.dead-letter"

    @property
    def federated(self) -> str:
        return f"{self.prefix}unlearn.federated"

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic-level configuration of each topic."""
        compact = {"cleanup.policy": "compact"}
        delete = {"cleanup.policy": "delete"}
        return {
            self.records: compact | RECORDS_ERASURE,
            self.deletions: delete | {"retention.ms": str(DELETIONS_RETENTION_MS)},
            self.model_ops: delete | {"retention.ms": str(MODEL_OPS_RETENTION_MS)},
            self.model_updates: compact,
            self.retrain: delete,
            self.receipts: delete,
            self.dead_letter: delete | {"retention.ms": str(DEAD_LETTER_RETENTION_MS)},
            self.federated: delete,
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self.configs())


def ensure_topics(
    bootstrap: str,
    topics: Topics,
    *,
    partitions: int = 6,
    replication_factor: int = 1,
    client_config: dict[str, Any] | None = None,
) -> list[str]:
    """Create the pipeline's topics that do not exist yet.

    Returns
    -------
    list of str
        The topics created.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(client_config or {}))
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, partitions, replication_factor, topic_configs=config)
            for name, config in topics.configs().items()
            if name not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in wanted]
    finally:
        admin.close()
