"""Process settings: one frozen object read from ``UNLEARN_*`` environment variables.

Every process (worker, retrainer, CLI, test) builds one :class:`Settings` and passes it
down explicitly. Secrets are :class:`~pydantic.SecretStr`, so they never appear in a
``repr``, a log line or an error message; :meth:`Settings.kafka_config` and
:meth:`Settings.redis_kwargs` are the only places that reveal them, to the client
libraries. A password written into ``UNLEARN_REDIS_URL`` (``redis://user:pw@host``) is
masked in the ``repr`` and ``str`` of :class:`Settings` (:func:`redact_url`).

:func:`resolve_services` decides where Kafka and Redis live:

* neither ``UNLEARN_KAFKA_BOOTSTRAP`` nor ``UNLEARN_REDIS_URL`` set: start the embedded
  broker (Tansu) and ``redis-server`` (dev mode, demos, tests) and say so in one log line;
* both set: use them, start nothing;
* only one set: refuse with :class:`~pipeline.errors.ConfigError`. Half a production
  configuration is almost always a mistake, and silently pairing a real broker with a
  throw-away Redis would lose models and deletion receipts (the audit trail) on exit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigError

__all__ = ["ResolvedServices", "Settings", "load_settings", "redact_url", "resolve_services"]

log = logging.getLogger(__name__)

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def redact_url(url: str) -> str:
    """``url`` with its password (``scheme://user:PASSWORD@host``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable as a URL: show nothing of it
        return "<unparseable URL>"
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Settings(BaseSettings):
    """Settings of one process, from ``UNLEARN_<FIELD>`` environment variables.

    Attributes
    ----------
    kafka_bootstrap : str or None
        ``host:port[,host:port...]`` of the Kafka cluster; ``None`` means embedded.
    redis_url : str or None
        ``redis://`` or ``rediss://`` URL of Redis; ``None`` means embedded.
    topic_prefix : str
        Prepended to every topic name (``""`` gives ``unlearn.records`` etc.).
    key_namespace : str
        First component of every Redis key (``unlearn`` by default).
    partitions : int
        Partitions per topic when the pipeline creates its topics.
    replication_factor : int
        Replication factor when the pipeline creates its topics.
    legal_deadline_days : int
        Days a deletion may take before it is overdue (GDPR: one month).
    erased_versions_grace_s : float
        Seconds the versions an erasure retires stay readable by number (never as
        ``current``) before they expire; 0 (default): deleted at once. At most the legal
        deadline.
    redis_cluster : bool
        ``UNLEARN_REDIS_URL`` names a node of a Redis Cluster: connect in cluster mode.
    receipt_retention_days : int
        Days receipts, the instants requests were processed and suppressions (not
        objections) are kept, then expire (default 730: CCPA's 24 months of records).
    max_batch, max_wait : int, float
        A worker applies up to ``max_batch`` events per model at once, waiting at most
        ``max_wait`` seconds to fill a batch.
    fetch_max_wait : float
        Seconds the broker may hold a worker's fetch when no new data is there. Some
        brokers (Tansu among them) hold it that long even when data arrives meanwhile, so
        it bounds the delivery latency; faust's fixed 1.5 s is replaced by this.
    max_event_bytes : int
        Larger messages are dead-lettered as ``oversized``.
    blas_threads : int
        BLAS threads for a worker's maths. One by default: the worker shares its cores
        with the broker and Redis, and a multithreaded BLAS call whose second thread waits
        for a busy core stalls the whole batch (a curvature recompute of 40 ms took 1.1 s
        on the 2-core development machine with one other busy process).
    metrics_port : int
        Port of the worker's and the retrainer's Prometheus ``/metrics`` (0: a free port,
        announced at start).
    metrics_addr : str
        Address ``/metrics`` listens on (``0.0.0.0`` in a container).
    metrics_interval : float
        Seconds between refreshes of the per-model gauges (read from Redis) and the lag.
    dashboard_port : int
        Port of the live status page (``unlearn dashboard``, ``unlearn services``,
        ``unlearn demo``; 0: a free port, announced at start).
    dashboard_addr : str
        Address the status page listens on: loopback by default, like ``metrics_addr``.
        The page is read-only, but it shows models and receipts to whoever reaches it.
    dashboard_refresh : float
        Seconds between two reads of Redis and the workers' ``/metrics`` by the page.
    broker_timeouts : {"default", "fast"}
        ``fast`` shortens faust's session, heartbeat and rebalance timeouts (tests, demo).
    keep_versions : int
        Model versions kept in Redis per model (older ones are retired).
    retrain_accuracy_drop, retrain_deleted_fraction, retrain_class_accuracy_drop : float
        Retrain when holdout accuracy fell by more than this since the last full fit, or
        when more than this fraction of the records was deleted since then, or when any
        class's holdout accuracy fell by more than this since the model's first version.
    retrain_cron : str or None
        Cron expression for scheduled retrains (``"0 3 * * *"``); none by default.
    retrain_min_interval : float
        Seconds between two retrain starts of one model: a trigger in between is held
        back (the worker asks again on a later batch; the retrainer defers a request until
        the interval has passed); ``operator`` requests skip it.
    retrain_timeout : float
        A retrain not handed back within this many seconds is abandoned.
    retrain_hold_seconds : float
        The retrainer holds a finished fit this long before handing it back, so that a
        demo or a test can show deletions arriving during a retrain; 0 in production.
    """

    model_config = SettingsConfigDict(
        env_prefix="UNLEARN_", frozen=True, extra="ignore", validate_default=True
    )

    kafka_bootstrap: str | None = Field(default=None, min_length=1)
    redis_url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://")
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    key_namespace: str = Field(default="unlearn", pattern=r"^[A-Za-z0-9._:-]+$", max_length=100)
    partitions: int = Field(default=6, gt=0, le=10_000)
    replication_factor: int = Field(default=1, gt=0, le=16)
    legal_deadline_days: int = Field(default=30, gt=0, le=3650)
    receipt_retention_days: int = Field(default=730, gt=0, le=36500)
    redis_cluster: bool = False
    erased_versions_grace_s: float = Field(default=0.0, ge=0)

    # workers: batching and limits
    max_batch: int = Field(default=500, gt=0, le=100_000)
    max_wait: float = Field(default=0.5, gt=0, le=60)
    fetch_max_wait: float = Field(default=0.05, gt=0, le=30)
    max_event_bytes: int = Field(default=1_048_576, gt=0, le=64 * 1_048_576)
    blas_threads: int = Field(default=1, gt=0, le=1024)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"
    metrics_interval: float = Field(default=5.0, gt=0, le=3600)
    dashboard_port: int = Field(default=0, ge=0, le=65535)
    dashboard_addr: str = "127.0.0.1"
    dashboard_refresh: float = Field(default=2.0, ge=0.2, le=3600)
    broker_timeouts: Literal["default", "fast"] = "default"
    keep_versions: int = Field(default=50, gt=0, le=1_000_000)

    # retraining fallback (pipeline.policy)
    retrain_accuracy_drop: float = Field(default=0.02, gt=0, le=1)
    retrain_deleted_fraction: float = Field(default=0.1, gt=0, le=1)
    retrain_class_accuracy_drop: float = Field(default=0.05, gt=0, le=1)
    retrain_cron: str | None = None
    retrain_min_interval: float = Field(default=60.0, ge=0)
    retrain_timeout: float = Field(default=1800.0, gt=0)
    retrain_hold_seconds: float = Field(default=0.0, ge=0, le=3600)

    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls: bool = False
    redis_tls_ca_file: Path | None = None

    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_tls: bool = False
    kafka_tls_ca_file: Path | None = None

    @model_validator(mode="after")
    def _check_sasl(self) -> Settings:
        if self.kafka_sasl_mechanism and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            msg = (
                f"UNLEARN_KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism} needs "
                "UNLEARN_KAFKA_SASL_USERNAME and UNLEARN_KAFKA_SASL_PASSWORD"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _check_grace(self) -> Settings:
        deadline = self.legal_deadline.total_seconds()
        if self.erased_versions_grace_s > deadline:
            msg = (
                f"UNLEARN_ERASED_VERSIONS_GRACE_S={self.erased_versions_grace_s:g} is longer "
                f"than the legal deadline ({deadline:g} s, UNLEARN_LEGAL_DEADLINE_DAYS): a "
                "version holding erased data may not outlive it"
            )
            raise ValueError(msg)
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "redis_url" and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    @property
    def legal_deadline(self) -> timedelta:
        """Time allowed to complete a deletion request."""
        return timedelta(days=self.legal_deadline_days)

    @property
    def receipt_retention(self) -> timedelta:
        """How long receipts and suppressions are kept."""
        return timedelta(days=self.receipt_retention_days)

    def kafka_config(self) -> dict[str, Any]:
        """Security options for kafka-python clients (reveals the SASL password).

        Returns
        -------
        dict
            ``security_protocol``, and ``sasl_*`` / ``ssl_cafile`` when configured;
            pass as ``KafkaProducer(**settings.kafka_config())``.
        """
        tls = self.kafka_tls or self.kafka_tls_ca_file is not None
        config: dict[str, Any] = {}
        if self.kafka_sasl_mechanism:
            config["security_protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
            config["sasl_mechanism"] = self.kafka_sasl_mechanism
            config["sasl_plain_username"] = self.kafka_sasl_username
            assert self.kafka_sasl_password is not None  # checked by _check_sasl
            config["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        else:
            config["security_protocol"] = "SSL" if tls else "PLAINTEXT"
        if self.kafka_tls_ca_file is not None:
            config["ssl_cafile"] = str(self.kafka_tls_ca_file)
        return config

    def redis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url`` (reveals the password)."""
        kwargs: dict[str, Any] = {}
        if self.redis_username:
            kwargs["username"] = self.redis_username
        if self.redis_password is not None:
            kwargs["password"] = self.redis_password.get_secret_value()
        if self.redis_tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(self.redis_tls_ca_file)
        if self.redis_tls and self.redis_url and self.redis_url.startswith("redis://"):
            kwargs["ssl"] = True
        return kwargs


def load_settings(**overrides: Any) -> Settings:
    """Read :class:`Settings` from the environment, turning errors into ``ConfigError``.

    Parameters
    ----------
    **overrides
        Values that take precedence over the environment (e.g. from CLI options).

    Raises
    ------
    ConfigError
        A variable is out of range or inconsistent; the message names it.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"UNLEARN_{'_'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: {err['msg']}"
            for err in exc.errors()
        )
        msg = f"invalid settings: {problems}"
        raise ConfigError(msg) from None


@dataclass(frozen=True)
class ResolvedServices:
    """Where this process finds Kafka and Redis.

    Attributes
    ----------
    kafka_bootstrap, redis_url : str
        Addresses to connect to.
    embedded : bool
        True when the services were started by this process (and stop with it).
    pids : tuple of int
        Process ids of the embedded services (empty when external).
    """

    kafka_bootstrap: str
    redis_url: str = field(repr=False)  # may carry a password
    embedded: bool
    pids: tuple[int, ...] = field(default=())


@contextmanager
def resolve_services(settings: Settings) -> Iterator[ResolvedServices]:
    """Yield the services to use, starting the embedded ones in dev mode.

    Parameters
    ----------
    settings : Settings
        Neither address set: start the embedded broker and Redis, stop them on exit.
        Both set: use them as they are.

    Raises
    ------
    ConfigError
        Only one of ``UNLEARN_KAFKA_BOOTSTRAP`` / ``UNLEARN_REDIS_URL`` is set.
    """
    kafka, redis_url = settings.kafka_bootstrap, settings.redis_url
    if kafka and redis_url:
        yield ResolvedServices(kafka_bootstrap=kafka, redis_url=redis_url, embedded=False)
        return
    if kafka or redis_url:
        have, missing = (
            ("UNLEARN_KAFKA_BOOTSTRAP", "UNLEARN_REDIS_URL")
            if kafka
            else ("UNLEARN_REDIS_URL", "UNLEARN_KAFKA_BOOTSTRAP")
        )
        msg = (
            f"{have} is set but {missing} is not: set both to use external services, "
            "or unset both to run the embedded broker and redis-server (dev mode)"
        )
        raise ConfigError(msg)

    from pipeline.embedded import EmbeddedServices

    with EmbeddedServices() as services:
        log.info(
            "dev mode: started embedded Kafka (Tansu) at %s and redis-server at %s; "
            "set UNLEARN_KAFKA_BOOTSTRAP and UNLEARN_REDIS_URL to use your own",
            services.kafka_bootstrap,
            services.redis_url,
        )
        yield ResolvedServices(
            kafka_bootstrap=services.kafka_bootstrap,
            redis_url=services.redis_url,
            embedded=True,
            pids=tuple(services.pids),
        )
