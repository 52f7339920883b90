"""Suppression entries and retention on the real redis-server (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.events import DeletionRequested, ReceiptStatus
from pipeline.store import Store
from pipeline.store.keys import subject_token
from pipeline.store.suppression import Candidate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_old_data_is_suppressed_new_data_is_not_and_replays_keep_the_first_instant(
    store: Store,
) -> None:
    sup = store.suppressions
    request = DeletionRequested(request_id="q1", subject_id="ann")
    sup.add([request], now=_at(100))
    sup.add([request], now=_at(500))  # a replay much later: the instant stays at 100
    out = sup.suppressed(
        "m",
        [
            Candidate("r1", "ann", _at(50)),
            Candidate("r2", "ann", _at(100)),
            Candidate("r3", "ann", _at(200)),  # produced after the erasure: new data
            Candidate("r4", "bob", _at(50)),
        ],
    )
    assert out == [True, True, False, False]
    # a second, genuine request later moves the instant forward
    sup.add([DeletionRequested(request_id="q2", subject_id="ann")], now=_at(300))
    assert sup.suppressed("m", [Candidate("r3", "ann", _at(200))]) == [True]


def test_scope_and_record_ids(store: Store) -> None:
    sup = store.suppressions
    sup.add([DeletionRequested(request_id="q", record_ids=["x1"], model_ids=["a"])], now=_at(100))
    cands = [Candidate("x1", "someone", _at(10))]
    assert sup.suppressed("a", cands) == [True]
    assert sup.suppressed("b", cands) == [False]  # the request named model a only


def test_an_objection_holds_until_lifted_and_never_expires(store: Store) -> None:
    sup = store.suppressions
    sup.add([DeletionRequested(request_id="q", subject_id="eve", objection=True)], now=_at(100))
    assert sup.suppressed("m", [Candidate("r", "eve", _at(10_000))]) == [True]
    flag = store.keys.suppression("o", subject_token("eve"), "*")
    assert store.client.ttl(flag) == -1  # no expiry while the objection holds
    assert sup.lift("eve", now=_at(20_000)) == 1
    assert sup.lift("eve", now=_at(20_001)) == 0  # nothing left to lift
    later = [Candidate("r", "eve", _at(10_000)), Candidate("s", "eve", _at(30_000))]
    assert sup.suppressed("m", later) == [True, False]
    assert not store.client.exists(flag)
    key = store.keys.suppression("s", subject_token("eve"), "*")
    assert 0 < store.client.ttl(key) <= int(timedelta(days=730).total_seconds())


def test_receipts_and_suppressions_expire_after_the_retention(redis_client, test_id) -> None:
    store = Store(redis_client, namespace=test_id, retention=timedelta(days=3))
    store.suppressions.add([DeletionRequested(request_id="q", subject_id="kim")])
    (rcpt,) = store.receipts.close_many("m", {"q": datetime.now(UTC)}, ReceiptStatus.APPLIED)
    three_days = int(timedelta(days=3).total_seconds())
    for key in (
        store.keys.receipt("m", "q"),
        store.keys.request_models("q"),
        store.keys.request_seen("q"),
        store.keys.suppression("s", subject_token("kim"), "*"),
    ):
        assert three_days - 60 < store.client.ttl(key) <= three_days, key
    assert rcpt.status is ReceiptStatus.APPLIED
