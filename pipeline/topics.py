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

__all__ = ["DELETIONS_RETENTION_MS", "Topics", "ensure_topics"]

DELETIONS_RETENTION_MS = 400 * 24 * 3600 * 1000
"""Deletion requests are kept 400 days: longer than any legal deadline, for audits."""


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
            self.records: compact,
            self.deletions: delete | {"retention.ms": str(DELETIONS_RETENTION_MS)},
            self.model_updates: compact,
            self.retrain: delete,
            self.receipts: delete,
            self.dead_letter: delete,
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
