"""The worker's agents driven in-process with faust's ``agent.test_context()``.

The subprocess tests (``test_worker_deletions.py``, ``test_worker_dead_letters.py``)
prove the stages end to end through a real worker process. Here an agent of an app made
by ``build_app`` takes its input from faust's test channel instead of its topic, applies
it to a model in the real Redis and sends its notices to the real broker, where they are
read back: the owner stage without a process, a consumer group or a rebalance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer
from sklearn.datasets import load_digits

from pipeline.config import Settings
from pipeline.embedded import EmbeddedServices
from pipeline.events import (
    DeadLetter,
    DeletionRequested,
    ModelPublished,
    Receipt,
    ReceiptStatus,
    RecordAdded,
    decode_event,
    encode_event,
)
from pipeline.intake import Message
from pipeline.notices import partition_of
from pipeline.ops import Forget
from pipeline.routing import model_ops
from pipeline.store import Store
from pipeline.topics import Topics, record_key
from pipeline.training import Table, load_holdout, train_model
from workers.app import build_app

PARAMS = {"lam": 1e-3, "sigma": 1.0, "seed": 3, "fit_intercept": True}


MODEL = "digits"


@pytest.fixture
def worker(services: EmbeddedServices, topics: Topics, store: Store, test_id: str) -> Any:
    """A trained model and a worker app on this test's topics and key namespace."""
    _train(store)
    settings = Settings(
        topic_prefix=topics.prefix, key_namespace=test_id, partitions=3, max_wait=0.05
    )
    return build_app(settings, services.kafka_bootstrap, services.redis_url)


def _train(store: Store) -> None:
    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16.0, y[:300]
    table = Table(
        X=X,
        y=y,
        subjects=[f"s{i % 50}" for i in range(len(y))],
        ids=[f"r{i}" for i in range(len(y))],
    )
    train_model(store, MODEL, table, params=PARAMS, holdout=0.2, seed=1)


def _agent(app: Any, name: str) -> Any:
    return next(agent for key, agent in app.agents.items() if key.endswith(f".{name}"))


async def _until(done: Callable[[], bool], what: str) -> None:
    """Wait for ``done()``, checked off the event loop (the agent runs on it)."""
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(done):
        assert time.monotonic() < deadline, f"the agent did not finish: {what}"
        await asyncio.sleep(0.05)


def _final(store: Store, request_id: str) -> bool:
    receipts = store.receipts.get(request_id)
    return bool(receipts) and all(r.status.final for r in receipts)


def _read(bootstrap: str, topic: str, wait_ms: int = 3000) -> list[Any]:
    """Every message on ``topic`` (read until none came for ``wait_ms``)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=wait_ms,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def test_the_owner_agent_applies_a_routed_batch_and_publishes_its_notices(
    services: EmbeddedServices, topics: Topics, store: Store, worker: Any
) -> None:
    app, runtime = worker
    model = MODEL
    doomed = sorted(store.records.subject_record_ids(model, "s7"))
    holdout = load_holdout(store, model)
    assert holdout is not None
    erased = len(doomed) + len(holdout.rows_of({"s7"}, set()))  # training and holdout rows
    request = DeletionRequested(request_id="q-agent", subject_id="s7")
    origin = Message(topics.deletions, 0, 41, b"s7", encode_event(request))
    by_model, _ = runtime.router.route([Forget(request, origin)])  # the intake stage
    [batch] = model_ops(by_model, runtime.settings.max_event_bytes)
    owner = _agent(app, "owner")

    async def scenario() -> None:
        await app.producer.start()  # the notices go to the real broker
        try:
            async with owner.test_context() as agent:
                await agent.put(encode_event(batch), key=model.encode())
                # done when the receipt is final and the broker took the tombstones (their
                # ids leave Redis only then)
                await _until(
                    lambda: _final(store, "q-agent") and not store.records.unsent_tombstones(model),
                    "the routed batch applied and its notices delivered",
                )
        finally:
            await app.producer.stop()

    asyncio.run(scenario())

    [receipt] = store.receipts.get("q-agent")
    assert receipt.status is ReceiptStatus.APPLIED and receipt.n_records == erased
    assert not (set(doomed) & store.records.ids(model))
    [published] = [
        decode_event(m.value, ModelPublished)
        for m in _read(services.kafka_bootstrap, topics.model_updates)
    ]
    assert published.version == 2 == receipt.version
    receipts = [
        decode_event(m.value, Receipt) for m in _read(services.kafka_bootstrap, topics.receipts)
    ]
    assert [(r.request_id, r.status) for r in receipts] == [("q-agent", ReceiptStatus.APPLIED)]
    tombstones = _read(services.kafka_bootstrap, topics.records)
    assert sorted(m.key for m in tombstones) == sorted(record_key(model, r) for r in doomed)
    assert {m.value for m in tombstones} == {None}
    assert {m.partition for m in tombstones} == {partition_of(model, 3)}


def test_the_records_stage_learns_a_record_and_dead_letters_a_bad_one(
    services: EmbeddedServices, topics: Topics, store: Store, worker: Any
) -> None:
    app, runtime = worker
    model = MODEL
    good = RecordAdded(
        event_id="e-good",
        model_id=model,
        record_id="new-1",
        subject_id="s-new",
        features=[0.25] * 64,
        label=3,
    )
    bad = good.model_copy(update={"event_id": "e-bad", "record_id": "new-2", "features": [1.0]})

    records = runtime.consumers["records"]  # a batch consumer's stage, not a faust agent
    batch = [
        Message(
            topics.records,
            partition_of(model, 3),
            offset,
            record_key(model, event.record_id),
            encode_event(event),
        )
        for offset, event in enumerate((good, bad))
    ]

    async def scenario() -> None:
        await app.producer.start()
        try:
            await records.handle(batch)  # returns once the notices are acknowledged
        finally:
            await app.producer.stop()

    asyncio.run(scenario())

    assert "new-1" in store.records.ids(model)
    assert "new-2" not in store.records.ids(model)
    [letter] = [
        decode_event(m.value, DeadLetter)
        for m in _read(services.kafka_bootstrap, topics.dead_letter)
    ]
    assert letter.reason == "feature_count" and "new-2" in letter.error
    [published] = [
        decode_event(m.value, ModelPublished)
        for m in _read(services.kafka_bootstrap, topics.model_updates)
    ]
    assert published.version == 2 and published.n_records == len(store.records.ids(model))
