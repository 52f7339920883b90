"""A worker killed with SIGKILL loses no deletion and applies none twice (DESIGN 7.1, 7.2).

One pipeline for the module: the real Tansu broker and redis-server, a retrainer, and a
worker this module kills and restarts itself. Models are logistic regressions trained on
UCI Adult (a9a encoding, 123 binary features, no intercept); each deletion request names
one record of one model.

Kill points: at random moments while 5,000 deletions stream in (seeded, chosen by how many
receipts are final, so every kill lands mid-stream), and at deterministic points injected
with ``UNLEARN_CRASH_AT`` (:mod:`pipeline.faults`): inside the Redis transaction (before
``EXEC``), right after it (before anything reaches Kafka), and on both sides of the
transaction that publishes a retrained model (the retrain hand-over).

After the restart, for every request: exactly one final receipt in Redis (``applied``, one
record), exactly one receipt on the receipts topic (announced at least once: a replay
announces the same receipt again); the model holds exactly the
records that were not deleted; and its coefficients are within the certified distance of
an exact refit on those records and of the engine applied directly to the same deletions
(see :func:`support.coef_bound_check`: ``||w - w'|| <= (c + c') / (lam n)``, the strong
convexity of the perturbed objective, with the published certificates ``c, c'``). Batch
boundaries differ between runs, so the comparison is to that bound, never to equality.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from pipeline.events import (
    FeatureRemovalRequested,
    LabelCorrection,
    RelabelRequested,
    encode_event,
)
from pipeline.training import train_model
from pipeline.unlearning.base import decode_ids

from .support import (
    PARAMS,
    Streamer,
    adult,
    coef_bound_check,
    deletions,
    n_final,
    poll,
    read_topic,
    receipt_messages,
    receipts,
    send,
    start_worker,
)


@pytest.fixture(scope="module")
def pipe(pipeline_factory):
    with pipeline_factory(
        "crash", retrainer=True, max_batch=250, retrain_hold_seconds=2, retrain_min_interval=0
    ) as pipeline:
        yield pipeline


def check_exactly_once(pipe, model_id: str, request_ids: list[str]) -> None:
    got = receipts(pipe.store, model_id, request_ids)
    assert all(r is not None and r.status.value == "applied" for r in got)
    assert all(r.n_records == 1 for r in got)  # each request removed its one record once
    on_topic = receipt_messages(pipe.bootstrap, pipe.topics.receipts, model_id, request_ids)
    missing = [q for q in request_ids if q not in on_topic]
    differing = {q: v for q, v in on_topic.items() if len(v) > 1}
    assert not missing, f"{len(missing)} receipts never reached the topic, e.g. {missing[:3]}"
    assert not differing, f"{len(differing)} requests got two different receipts"
    assert set(on_topic) == set(request_ids)


def test_random_kills_while_5000_deletions_stream_in(pipe) -> None:
    model = "adult-random"
    table, X_test, y_test = adult(0, 10_000)
    train_model(pipe.store, model, table, params=PARAMS, holdout=0.0)
    rng = np.random.default_rng(7)
    doomed = [table.ids[i] for i in rng.choice(len(table), size=5_000, replace=False)]
    events = deletions(model, doomed)
    request_ids = [ev.request_id for ev in events]

    streamer = Streamer(pipe.bootstrap, pipe.topics.deletions, events, chunk=100, every=0.15)
    streamer.start()
    kills = []
    for threshold in sorted(rng.choice(np.arange(300, 4_500), size=3, replace=False)):
        poll(lambda t=threshold: n_final(pipe.store, model, request_ids) >= t, 120, "progress")
        time.sleep(float(rng.uniform(0.0, 0.4)))
        before = n_final(pipe.store, model, request_ids)
        start_worker(pipe)  # SIGKILL, then a new worker
        kills.append(before)
    streamer.join(60)
    assert streamer.error is None and not streamer.is_alive()
    poll(lambda: n_final(pipe.store, model, request_ids) == 5_000, 180, "5,000 final receipts")
    assert all(0 < k < 5_000 for k in kills), kills  # every kill landed mid-stream

    check_exactly_once(pipe, model, request_ids)
    coef_bound_check(pipe.store, model, table, set(doomed), X_test, y_test)
    assert pipe.procs["worker"].poll() is None


@pytest.mark.parametrize(
    "point", ["publication.exec@3", "publication.committed@3"], ids=["before_exec", "after_exec"]
)
def test_kill_at_the_redis_transaction(pipe, point: str) -> None:
    model = f"adult-{point.split('@')[0].replace('.', '-')}"
    start = 10_000 if "exec" in point.split(".")[1] else 13_000
    table, X_test, y_test = adult(start, 3_000)
    train_model(pipe.store, model, table, params=PARAMS, holdout=0.0)
    rng = np.random.default_rng(start)
    doomed = [table.ids[i] for i in rng.choice(len(table), size=900, replace=False)]
    events = deletions(model, doomed)
    request_ids = [ev.request_id for ev in events]

    at, _, nth = point.partition("@")
    proc = start_worker(pipe, crash_at=f"{at}:{model}@{nth}")
    for i in range(0, 900, 150):  # in slices, so that the batches are several
        send(pipe.bootstrap, pipe.topics.deletions, events[i : i + 150])
        time.sleep(0.3)
    poll(lambda: proc.poll() is not None, 60, f"the worker to die at {point}")
    assert proc.returncode == -9
    version = pipe.store.models.current_version(model)
    done = n_final(pipe.store, model, request_ids)
    assert 0 < done < 900 and version >= 3
    if point.startswith("publication.exec"):
        assert version == 3  # two publications committed, the third discarded by Redis
    start_worker(pipe)
    poll(lambda: n_final(pipe.store, model, request_ids) == 900, 60, "900 final receipts")

    check_exactly_once(pipe, model, request_ids)
    coef_bound_check(pipe.store, model, table, set(doomed), X_test, y_test)


@pytest.mark.parametrize("point", ["merge.commit", "merge.committed"])
def test_kill_during_a_retrain_hand_over(pipe, point: str) -> None:
    model = f"adult-{point.replace('.', '-')}"
    start = 16_000 if point == "merge.commit" else 19_000
    table, X_test, y_test = adult(start, 3_000)
    train_model(pipe.store, model, table, params=PARAMS, holdout=0.0)
    store = pipe.store
    rng = np.random.default_rng(start)
    doomed = [table.ids[i] for i in rng.choice(len(table), size=400, replace=False)]
    events = deletions(model, doomed)
    first, later = events[:200], events[200:]

    proc = start_worker(pipe, crash_at=f"{point}:{model}")
    assert pipe.cli("retrain", model).returncode == 0
    poll(
        lambda: (
            (m := store.client.get(store.keys.retrain_inflight(model)))
            and "progress" in json.loads(m)
        ),
        30,
        "the retrainer's snapshot",
    )
    send(pipe.bootstrap, pipe.topics.deletions, first)  # lands between snapshot and hand-back
    poll(lambda: proc.poll() is not None, 60, f"the worker to die at {point}")
    assert proc.returncode == -9
    merged = [m for m in store.models.history(model) if m.method == "retrain"]
    if point == "merge.commit":
        assert not merged  # the hand-over was not published
        assert store.client.exists(store.keys.retrain_result(model))
    else:
        assert merged and store.models.current_version(model) == merged[-1].version
        assert not store.client.exists(store.keys.retrain_inflight(model))

    start_worker(pipe)
    send(pipe.bootstrap, pipe.topics.deletions, later)
    request_ids = [ev.request_id for ev in events]
    poll(lambda: n_final(store, model, request_ids) == 400, 60, "400 final receipts")
    retrained = poll(
        lambda: [m for m in store.models.history(model) if m.method == "retrain"],
        60,
        "a merged retrain",
    )
    poll(lambda: not store.client.exists(store.keys.retrain_inflight(model)), 60, "retrain end")
    assert max(m.version for m in retrained) <= store.models.current_version(model)
    check_exactly_once(pipe, model, request_ids)
    # the current version's engine holds exactly the records not deleted
    gone = set(doomed)
    ckpt = store.checkpoints.load(model)
    assert ckpt is not None and ckpt.version == store.models.current_version(model)
    assert set(decode_ids(ckpt.state["record_ids_json"])) == set(table.ids) - gone
    coef_bound_check(store, model, table, gone, X_test, y_test)


def _last_on_records_topic(pipe, model_id: str, record_ids: set[str]) -> dict[str, Any]:
    """The last message of each of ``record_ids`` on ``unlearn.records`` (None: tombstone),
    waiting until every one of them has at least one."""
    prefix = f"{model_id}/"

    def last(messages: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in messages:
            key = m.key.decode()
            if key.startswith(prefix) and key[len(prefix) :] in record_ids:
                out[key[len(prefix) :]] = None if m.value is None else json.loads(m.value)
        return out

    messages = read_topic(
        pipe.bootstrap, pipe.topics.records, until=lambda ms: len(last(ms)) == len(record_ids)
    )
    return last(messages)


@pytest.mark.parametrize("operation", ["feature_removal", "relabel"])
def test_kill_after_an_edit_commits_still_rewrites_the_records_topic(pipe, operation) -> None:
    """A feature removal or a relabel committed in Redis, then SIGKILL before the broker
    took the corrected records: the restarted worker reads the request again, finds it
    applied, and still sends them, so the compacted topic keeps no forgotten value and no
    old label."""
    model = f"adult-edit-{operation.replace('_', '-')}"
    start = 22_000 if operation == "feature_removal" else 22_400
    table, _, _ = adult(start, 300)
    train_model(pipe.store, model, table, params=PARAMS, holdout=0.0)
    store = pipe.store
    column = int(np.flatnonzero(table.X.any(axis=0))[0])  # a column some record uses
    fixed = {rid: int(1 - label) for rid, label in zip(table.ids[:5], table.y[:5], strict=True)}
    event: FeatureRemovalRequested | RelabelRequested
    if operation == "feature_removal":
        event = FeatureRemovalRequested(request_id=f"q-{model}", model_id=model, columns=[column])
        changed = set(table.ids)
    else:
        labels = [LabelCorrection(record_id=r, label=v) for r, v in fixed.items()]
        event = RelabelRequested(request_id=f"q-{model}", model_id=model, labels=labels)
        changed = set(fixed)

    proc = start_worker(pipe, crash_at=f"publication.committed:{model}@1")
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap, acks="all")
    producer.send(pipe.topics.deletions, key=model.encode(), value=encode_event(event))
    producer.flush()
    producer.close()
    poll(lambda: proc.poll() is not None, 60, f"the worker to die after {operation} commits")
    assert proc.returncode == -9
    receipt = store.receipts.get_one(event.request_id, model)
    assert receipt is not None and receipt.status.value == "applied"  # Redis has it

    start_worker(pipe)
    last = _last_on_records_topic(pipe, model, changed)
    missing = sorted(changed - set(last))
    assert not missing, f"{len(missing)} corrected records never reached the topic: {missing[:3]}"
    for rid in changed:
        assert last[rid] is not None, rid
        if operation == "feature_removal":
            assert last[rid]["features"][column] == 0.0, rid
        else:
            assert last[rid]["label"] == fixed[rid], rid
    poll(lambda: not store.records.unsent_corrections(model), 30, "the corrections acknowledged")
