"""A federated participant: compute statistics on local arrays and publish them.

A client of a federation (declared with :meth:`pipeline.federated.FederationBoard.create`)
keeps its rows; for the round the server has posted it sends only its statistics::

    with FederatedClient("hospital-3", X, y, "kafka:9092", "redis://redis:6379/0") as me:
        while not done():
            me.answer("mnist-fed")      # reads the open round, publishes if it is ours
            time.sleep(0.5)

Each answer is K ``ClientStats`` events (one per one-vs-rest problem: gradient, Hessian,
count at the round's global model), keyed by the model id so that one federation's
events stay in order on one partition, produced with ``acks="all"`` and the idempotent
producer (a retried send is written once). A Hessian is ``d * d`` floats: keep ``d`` small
enough that an event fits ``UNLEARN_MAX_EVENT_BYTES``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from kafka import KafkaProducer
from numpy.typing import ArrayLike

from pipeline.events import encode_event
from pipeline.federated.board import FederationBoard, PostedRound
from pipeline.federated.client import FederatedClient as LocalClient
from pipeline.federated.statistics import RoundRequest
from pipeline.store import Store
from pipeline.store.keys import DEFAULT_NAMESPACE
from pipeline.topics import Topics

__all__ = ["FederatedClient"]


class FederatedClient(LocalClient):
    """A :class:`pipeline.federated.FederatedClient` that publishes to the pipeline.

    Parameters
    ----------
    client_id : str
        Its id in the federation.
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    bootstrap : str
        Kafka ``host:port[,host:port]``.
    redis_url : str
        Where the open round is posted.
    topic_prefix : str
        Prefix of the pipeline's topics (``UNLEARN_TOPIC_PREFIX``).
    namespace : str
        Redis key namespace (``UNLEARN_KEY_NAMESPACE``).
    timeout : float
        Seconds to wait for the broker to acknowledge a send.
    **producer_config
        Extra ``KafkaProducer`` options (security settings, ``client_id``, ...).
    """

    def __init__(
        self,
        client_id: str,
        X: ArrayLike,
        y: ArrayLike,
        bootstrap: str,
        redis_url: str,
        topic_prefix: str = "",
        *,
        namespace: str = DEFAULT_NAMESPACE,
        timeout: float = 30.0,
        **producer_config: Any,
    ) -> None:
        super().__init__(client_id, X, y)
        self.topics = Topics(topic_prefix)
        self.timeout = timeout
        self._store = Store.from_url(redis_url, namespace)
        self._board = FederationBoard(self._store)
        self._answered: dict[str, int] = {}
        config: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "client_id": f"unlearn-federated-{client_id}",
            "max_request_size": 16 * 1_048_576,
        }
        config.update(producer_config)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, **config)

    def open_round(self, model_id: str) -> PostedRound | None:
        """The round the server has posted for ``model_id`` (None: no round is open)."""
        return self._board.posted(model_id)

    def publish(self, model_id: str, request: RoundRequest) -> list[str]:
        """Compute this client's statistics for ``request`` and publish them.

        Returns
        -------
        list of str
            The event ids sent (``model:client:round:k``), acknowledged by the broker.
        """
        stats = self.statistics(request)
        labels = list(request.problems) if request.problems and len(request.problems) > 1 else None
        events = stats.to_events(model_id, labels)
        futures = [
            self._producer.send(
                self.topics.federated,
                key=model_id.encode(),
                value=encode_event(event),
                headers=[("type", b"ClientStats"), ("model_id", model_id.encode())],
            )
            for event in events
        ]
        self._producer.flush(timeout=self.timeout)
        for future in futures:
            future.get(timeout=self.timeout)
        self._answered[model_id] = request.round
        return [event.event_id for event in events]

    def answer(self, model_id: str) -> bool:
        """Publish statistics for the open round if this client must and has not yet.

        Returns
        -------
        bool
            True if statistics were sent.
        """
        posted = self.open_round(model_id)
        if posted is None or self.client_id not in posted.members:
            return False
        if self._answered.get(model_id, -1) >= posted.request.round:
            return False
        self.publish(model_id, posted.request)
        return True

    def close(self) -> None:
        """Flush and close the producer and the Redis connection."""
        self._producer.close(timeout=self.timeout)
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
