"""pipeline.notices: each outcome's messages, on their topics, keys and partitions, in order."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.events import (
    DeadLetter,
    DeletionRequested,
    ModelOps,
    ModelPublished,
    Origin,
    Receipt,
    ReceiptStatus,
    RetrainRequested,
    RoutedRequest,
    decode_event,
    encode_event,
)
from pipeline.intake import Message, Rejected
from pipeline.notices import notices, partition_of
from pipeline.ops import Outcome
from pipeline.topics import Topics, record_key

T = Topics("p.")
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def _receipt(request_id: str, model_id: str) -> Receipt:
    return Receipt(
        event_id=f"rcpt:{request_id}:{model_id}",
        request_id=request_id,
        model_id=model_id,
        status=ReceiptStatus.APPLIED,
        version=2,
        received_at=WHEN,
        due_at=WHEN,
    )


def _published(model_id: str) -> ModelPublished:
    return ModelPublished(
        event_id=f"pub:{model_id}:2",
        model_id=model_id,
        version=2,
        method="fisher",
        n_records=9,
        seq=4,
    )


def _ops(model_id: str) -> ModelOps:
    routed = RoutedRequest(
        request=DeletionRequested(request_id="q1", subject_id="s1"),
        origin=Origin(topic=T.deletions, partition=0, offset=7),
    )
    return ModelOps(event_id=f"ops:{model_id}", model_id=model_id, requests=[routed])


def _rejected(offset: int) -> Rejected[DeletionRequested]:
    return Rejected(Message(T.deletions, 1, offset, b"subject", b"{bad"), "malformed_json", "no")


def test_an_outcome_becomes_its_messages_in_order_with_the_models_partition() -> None:
    outcome = Outcome(
        "m1",
        published=_published("m1"),
        receipts=[_receipt("q1", "m1"), _receipt("q2", "m1")],
        tombstones=["r1", "r2"],
        retrain=RetrainRequested.new("m1", "budget", 4),
        rejected=[_rejected(9)],
    )
    sent = notices([outcome], [_rejected(3)], T, partitions=6)

    owner = partition_of("m1", 6)
    assert [(topic, key, part) for topic, key, _, part in sent] == [
        (T.model_updates, b"m1", None),
        (T.receipts, b"q1", None),
        (T.receipts, b"q2", None),
        (T.records, record_key("m1", "r1"), owner),
        (T.records, record_key("m1", "r2"), owner),
        (T.retrain, b"m1", None),
        (T.dead_letter, b"subject", None),  # the decoder's dead letters come first
        (T.dead_letter, b"subject", None),
    ]
    assert sent[0][2] == encode_event(outcome.published)
    assert [value for topic, _, value, _ in sent if topic == T.records] == [None, None]
    offsets = [decode_event(v, DeadLetter).offset for t, _, v, _ in sent if t == T.dead_letter]
    assert offsets == [3, 9]


def test_forwarded_batches_go_to_their_owners_partition() -> None:
    routing = Outcome("*", forward=[_ops("a"), _ops("b")], receipts=[_receipt("q9", "c")])
    sent = notices([routing], [], T, partitions=6)
    assert sent[0][0] == T.receipts
    forwarded = [(key, part) for topic, key, _, part in sent if topic == T.model_ops]
    assert forwarded == [(b"a", partition_of("a", 6)), (b"b", partition_of("b", 6))]
    assert partition_of("a", 6) in range(6)


def test_nothing_to_say_sends_nothing() -> None:
    assert notices([Outcome("m1", skipped=3)], [], T, partitions=3) == []


def test_a_relabelled_record_goes_back_on_the_records_topic_after_the_tombstones() -> None:
    from pipeline.events import RecordAdded

    corrected = RecordAdded(
        event_id="relabel:m:r1:5",
        model_id="m",
        record_id="r1",
        subject_id="s1",
        features=[0.0, 1.0],
        label=0,
    )
    out = Outcome("m", tombstones=["r9"], republish=[corrected])
    sent = notices([out], [], T, partitions=6)
    assert [(topic, key) for topic, key, _, _ in sent] == [
        (T.records, record_key("m", "r9")),
        (T.records, record_key("m", "r1")),  # the same key: compaction drops the old label
    ]
    _, _, value, part = sent[1]
    assert part == partition_of("m", 6) and decode_event(value, RecordAdded) == corrected
