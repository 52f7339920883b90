"""pipeline.plan: a batch's net effect on a model, decided without Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from pipeline import LogisticUnlearner
from pipeline.events import DeletionRequested, Receipt, ReceiptStatus, RecordAdded
from pipeline.intake import Message
from pipeline.ops import Forget, Learn
from pipeline.plan import Facts, plan_batch
from pipeline.store.keys import subject_token
from pipeline.training import Holdout


@pytest.fixture(scope="module")
def engine(digits):
    X, y = digits
    X, y = X[:200], y[:200]
    return LogisticUnlearner(lam=1e-3, sigma=1.0, seed=3).fit(
        X, y, ids=[f"r{i}" for i in range(len(y))]
    )


WHEN = datetime(2026, 1, 1, tzinfo=UTC)
HELD = {f"r{i}": f"s{i % 20}" for i in range(200)}


def forget(request_id: str, **fields) -> Forget:
    return Forget(DeletionRequested(request_id=request_id, **fields))


def learn(event_id: str, record_id: str, subject: str, n: int = 64, label=3) -> Learn:
    ev = RecordAdded(
        event_id=event_id,
        model_id="m",
        record_id=record_id,
        subject_id=subject,
        features=[0.5] * n,
        label=label,
    )
    return Learn(ev, Message("records", 0, 0, record_id.encode(), b"{}"))


def plan(engine, ops, facts=None, holdout=None):
    return plan_batch("m", ops, facts or Facts(), engine=engine, held=HELD, holdout=holdout)


def test_a_subjects_held_records_are_removed_and_counted(engine) -> None:
    p = plan(engine, [forget("q1", subject_id="s3")], Facts(subject_records={"s3": {"r3", "r23"}}))
    assert list(p.removed) == ["r23", "r3"] and p.requests == {"q1": 2}
    assert p.erased == {"r3", "r23"} and p.changes


def test_replays_are_skipped_and_final_receipts_announced_again(engine) -> None:
    final = Receipt(
        event_id="rcpt:q1:m",
        request_id="q1",
        model_id="m",
        status=ReceiptStatus.APPLIED,
        version=2,
        received_at=WHEN,
        due_at=WHEN,
    )
    ops = [
        forget("q1", subject_id="s3"),
        forget("q2", record_ids=["r5"]),
        forget("q2", record_ids=["r5"]),  # the same request twice in a batch
        learn("e1", "new-1", "s99"),
    ]
    p = plan(engine, ops, Facts(final={"q1": final}, seen={"e1"}))
    assert p.skipped == 3 and p.announce == {"q1": final}
    assert p.requests == {"q2": 1} and list(p.removed) == ["r5"] and not p.added


def test_a_record_learned_and_deleted_in_one_batch_is_never_learned(engine) -> None:
    ops = [learn("e1", "new-1", "s99"), learn("e2", "new-2", "s98"), forget("q", subject_id="s99")]
    p = plan(engine, ops)
    assert list(p.added) == ["new-2"] and p.erased_pending == {"new-1"}
    assert p.requests == {"q": 1} and p.erased == {"new-1"}


def test_a_record_learned_again_replaces_the_held_one(engine) -> None:
    p = plan(engine, [learn("e1", "r7", "s7")])
    assert list(p.removed) == ["r7"] and list(p.added) == ["r7"] and p.erased == set()


def test_bad_and_suppressed_records_are_not_learned_and_leave_the_topic(engine) -> None:
    ops = [
        learn("e1", "new-1", "s1", n=3),  # wrong feature count: a dead letter
        learn("e2", "new-2", "s2", label=42),  # a class the model does not have
        learn("e3", "new-3", "s3"),  # suppressed (produced before an erasure)
        learn("e4", "r4", "s4"),  # suppressed, but the model holds r4: no tombstone
    ]
    p = plan(engine, ops, Facts(suppressed={2, 3}))
    assert [r.reason for r in p.rejected] == ["feature_count", "unknown_class"]
    assert p.dropped == ["new-1", "new-2", "new-3"] and not p.added and not p.changes


def test_holdout_rows_are_erased_and_counted_once(engine) -> None:
    holdout = Holdout(
        X=np.zeros((3, 64)),
        y=np.array([1, 2, 3]),
        tokens=[subject_token("h1"), subject_token("h1"), subject_token("h2")],
        ids=["h-a", "h-b", "h-c"],
    )
    ops = [forget("q1", subject_id="h1"), forget("q2", record_ids=["h-a", "h-c"])]
    p = plan(engine, ops, holdout=holdout)
    assert p.requests == {"q1": 2, "q2": 1} and p.holdout_rows == 3 and p.changes
