"""The pipeline's state in Redis: model versions, training records, receipts, checkpoints.

Key layout: :mod:`pipeline.store.keys` and ``docs/redis-keys.md``.
"""

from pipeline.store.access import AccessRole, AclUser
from pipeline.store.checkpoints import Checkpoint, CheckpointStore
from pipeline.store.facade import Store, connect
from pipeline.store.keys import KeySpace
from pipeline.store.models import ModelRegistry, UnknownVersion
from pipeline.store.publication import Publication, PublishResult
from pipeline.store.receipts import ReceiptStore
from pipeline.store.records import RecordStore, StoredRecord
from pipeline.store.versions import ModelSpec, ModelVersion, VersionMetadata

__all__ = [
    "AccessRole",
    "AclUser",
    "Checkpoint",
    "CheckpointStore",
    "KeySpace",
    "ModelRegistry",
    "ModelSpec",
    "ModelVersion",
    "Publication",
    "PublishResult",
    "ReceiptStore",
    "RecordStore",
    "Store",
    "StoredRecord",
    "UnknownVersion",
    "VersionMetadata",
    "connect",
]
