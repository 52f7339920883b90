"""The Redis key layout: the only module that spells out key names.

Every per-model key carries the model id as a hash tag, ``{model_id}``, so that all of
a model's state lives in one Redis Cluster slot and one MULTI/EXEC can publish a version
together with its erasures, receipts, sequence marker and checkpoint. Two indexes span
models and so carry their own hash tag: subject -> models and request -> models. They
are written *before* the model transaction (a superset is harmless) and cleaned up after
it, never inside it.

Subject ids can be personal data (an e-mail address), so key names carry a SHA-256
token of the subject id, never the id itself. The full table is in ``docs/redis-keys.md``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pipeline.errors import InvalidInput

__all__ = ["DEFAULT_NAMESPACE", "KeySpace", "subject_token"]

DEFAULT_NAMESPACE = "unlearn"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9._:-]+$")


def subject_token(subject_id: str) -> str:
    """Stable, non-reversible token of a subject id used in key names (32 hex chars)."""
    return hashlib.sha256(subject_id.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class KeySpace:
    """Builds every key under one namespace.

    Parameters
    ----------
    namespace : str
        First component of every key (``unlearn``); tests use a unique one each.
    """

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace) or "{" in self.namespace:
            msg = (
                f"Redis key namespace {self.namespace!r} must be letters, digits, '.', '_', "
                "'-' or ':'"
            )
            raise InvalidInput(msg)

    def _model(self, model_id: str) -> str:
        if not _MODEL_ID.match(model_id):
            msg = (
                f"model id {model_id!r} is not valid: use 1-128 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
            raise InvalidInput(msg)
        return f"{self.namespace}:{{{model_id}}}"

    # model versions ---------------------------------------------------------------
    def current(self, model_id: str) -> str:
        """STRING: the current version number."""
        return f"{self._model(model_id)}:current"

    def version(self, model_id: str, version: int) -> str:
        """HASH: ``meta`` (JSON), ``coef`` and ``intercept`` (raw LE bytes) of a version."""
        return f"{self._model(model_id)}:v:{int(version)}"

    def versions(self, model_id: str) -> str:
        """ZSET: version numbers, scored by version."""
        return f"{self._model(model_id)}:versions"

    def checkpoint(self, model_id: str, version: int) -> str:
        """HASH: the engine checkpoint saved with a version (manifest + array bytes)."""
        return f"{self._model(model_id)}:ckpt:{int(version)}"

    def federation(self, model_id: str) -> str:
        """STRING: JSON definition of the federation that trains the model."""
        return f"{self._model(model_id)}:fed"

    def federation_round(self, model_id: str) -> str:
        """STRING: JSON of the federation's open round (what clients must answer)."""
        return f"{self._model(model_id)}:fed:round"

    def checkpoints(self, model_id: str) -> str:
        """ZSET: versions that have a checkpoint."""
        return f"{self._model(model_id)}:ckpts"

    def applied_seq(self, model_id: str) -> str:
        """STRING: sequence number of the last input applied to the current version."""
        return f"{self._model(model_id)}:applied-seq"

    def events(self, model_id: str) -> str:
        """STREAM: one entry per published version (for ``XREAD BLOCK`` watchers)."""
        return f"{self._model(model_id)}:events"

    def channel(self, model_id: str) -> str:
        """Pub/sub channel announcing each published version."""
        return f"{self._model(model_id)}:published"

    # training records -------------------------------------------------------------
    def record(self, model_id: str, record_id: str) -> str:
        """HASH: ``features`` (raw LE float64), ``label`` (JSON), ``subject``."""
        return f"{self._model(model_id)}:rec:{record_id}"

    def records(self, model_id: str) -> str:
        """SET: record ids the model holds."""
        return f"{self._model(model_id)}:recs"

    def tombstones(self, model_id: str) -> str:
        """SET: erased record ids whose tombstones the broker has not yet acknowledged."""
        return f"{self._model(model_id)}:tombstones"

    def corrections(self, model_id: str) -> str:
        """HASH: record id -> event id of its corrected ``RecordAdded`` (a feature removal or
        a relabel rewrote the record) that the broker has not yet acknowledged."""
        return f"{self._model(model_id)}:corrections"

    def relabelled(self, model_id: str) -> str:
        """HASH: record id -> epoch seconds its label was last corrected; a ``RecordAdded``
        of the record produced at or before then (the old label) is never learned."""
        return f"{self._model(model_id)}:relabelled"

    def subject_records(self, model_id: str, subject_id: str) -> str:
        """SET: a subject's record ids in one model."""
        return f"{self._model(model_id)}:subj:{subject_token(subject_id)}"

    def subject_models(self, subject_id: str) -> str:
        """SET: models that may hold records of a subject (own hash tag)."""
        return f"{self.namespace}:{{s:{subject_token(subject_id)}}}:models"

    # deletion receipts ------------------------------------------------------------
    def receipt(self, model_id: str, request_id: str) -> str:
        """STRING: JSON receipt of one deletion request for one model."""
        return f"{self._model(model_id)}:rcpt:{request_id}"

    def pending(self, model_id: str) -> str:
        """ZSET: request ids not yet final, scored by received time (epoch seconds)."""
        return f"{self._model(model_id)}:pending"

    def request_models(self, request_id: str) -> str:
        """SET: models a deletion request concerns (own hash tag)."""
        return f"{self.namespace}:{{r:{request_id}}}:models"

    def applied_events(self, model_id: str) -> str:
        """ZSET: ids of the input events applied to the model (score: seq), for replays."""
        return f"{self._model(model_id)}:applied"

    def holdout(self, model_id: str) -> str:
        """HASH: the model's holdout set (encoded like a checkpoint: ``X``, ``y``)."""
        return f"{self._model(model_id)}:holdout"

    def audits(self, model_id: str) -> str:
        """HASH: the last audit report (JSON) of each held version; field: the version.

        Written by :func:`pipeline.audit.audit`, which drops the fields of versions no
        longer held.
        """
        return f"{self._model(model_id)}:audits"

    # retraining -------------------------------------------------------------------
    def retrain_inflight(self, model_id: str) -> str:
        """STRING (with TTL): JSON of the retrain in flight; its presence coalesces triggers."""
        return f"{self._model(model_id)}:retrain:inflight"

    def retrain_result(self, model_id: str) -> str:
        """HASH: a finished fit handed back by the retrainer (engine state + ``meta``)."""
        return f"{self._model(model_id)}:retrain:result"

    def retrain_last(self, model_id: str) -> str:
        """STRING: epoch seconds when the model's last retrain started (rate limit)."""
        return f"{self._model(model_id)}:retrain:last"

    def worker(self, name: str) -> str:
        """STRING (with TTL): JSON status of a running worker process (readiness, metrics)."""
        return f"{self.namespace}:worker:{name}"

    # suppression: what an acknowledged erasure keeps out --------------------------------
    def suppression(self, kind: str, token: str, scope: str) -> str:
        """A suppression entry (:mod:`pipeline.store.suppression`).

        ``kind`` ``s`` (a subject) or ``r`` (a record id): HASH request id -> instant the
        request was first processed, and ``lift`` -> instant of the last lifted objection
        (TTL: receipt retention); ``o``: STRING, the subject's objection (no TTL until
        lifted). ``token`` is the SHA-256 token of the id, ``scope`` a model id or ``*``
        (every model). Own hash tag per id, ``{zs:...}``, ``{zr:...}`` or ``{zo:...}``: never
        one that a reader's ACL pattern (``{r:*}``) matches.
        """
        return f"{self.namespace}:{{z{kind}:{token}}}:supp:{scope}"

    def request_seen(self, request_id: str) -> str:
        """STRING (TTL: receipt retention): epoch seconds a request was first processed."""
        return f"{self.namespace}:{{r:{request_id}}}:seen"

    def model_index(self) -> str:
        """SET: every model id that has published a version."""
        return f"{self.namespace}:models"

    # ACL glob patterns (pipeline.store.access) ---------------------------------------
    def namespace_pattern(self) -> str:
        """Glob of every key and pub/sub channel under the namespace (the writer's)."""
        return f"{self.namespace}:*"

    def reader_key_patterns(self) -> tuple[str, ...]:
        """Globs of the keys a reader of published models and receipts reads.

        ``ModelClient.get``/``history``/``watch``/``receipt`` read the ``current`` alias,
        version hashes, the versions zset, the publication stream, receipts, the request
        index and the model index; a privacy officer reads the stored audit reports
        (:func:`pipeline.audit.latest_report`). Never checkpoints (they hold the secret perturbation
        ``b``), training records, subject indexes, the holdout or retrain state.

        Returns
        -------
        tuple of str
            Redis glob patterns (``~`` rules of ``ACL SETUSER``), built by the same
            methods as the keys, with ``*`` for the model, version and request ids.
        """
        glob = _Globs(self.namespace)
        version = glob.version(_ANY, 0)
        return (
            glob.current(_ANY),
            version[: version.rindex(":") + 1] + _ANY,
            glob.versions(_ANY),
            glob.events(_ANY),
            glob.receipt(_ANY, _ANY),
            glob.request_models(_ANY),
            glob.model_index(),
            glob.audits(_ANY),
        )

    def reader_channel_patterns(self) -> tuple[str, ...]:
        """Globs of the pub/sub channels a reader may subscribe to (``&`` rules)."""
        return (_Globs(self.namespace).channel(_ANY),)


_ANY = "*"


class _Globs(KeySpace):
    """The key builders with ``*`` accepted as a model id: they build glob patterns."""

    def _model(self, model_id: str) -> str:
        if model_id != _ANY:
            return super()._model(model_id)
        return f"{self.namespace}:{{{model_id}}}"
