"""The intake stage's per-model batches: split under the size limit, stable ids, origins."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.events import DeletionRequested, ModelOps, decode_event, encode_event
from pipeline.intake import Message
from pipeline.ops import Forget
from pipeline.routing import forgets, model_ops


def _op(i: int) -> Forget:
    request = DeletionRequested(request_id=f"q{i}", subject_id=f"subject-{i}")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return Forget(request, Message("unlearn.deletions", 2, 100 + i, b"k", b"{}", when))


def test_batches_stay_under_the_limit_and_keep_every_request_in_order():
    ops = [_op(i) for i in range(200)]
    batches = model_ops({"a": ops, "b": ops[:3]}, max_bytes=4_000)
    assert all(len(encode_event(b)) <= 4_000 for b in batches)
    assert len([b for b in batches if b.model_id == "a"]) > 1
    routed = [r.request.request_id for b in batches if b.model_id == "a" for r in b.requests]
    assert routed == [f"q{i}" for i in range(200)]
    assert [b.model_id for b in batches][-1] == "b"


def test_ids_are_stable_across_a_replay_and_origins_survive_the_trip():
    ops = [_op(i) for i in range(5)]
    first, again = model_ops({"a": ops}, 100_000), model_ops({"a": ops}, 100_000)
    assert [b.event_id for b in first] == [b.event_id for b in again]
    (batch,) = first
    wire = decode_event(encode_event(batch), ModelOps)
    back = forgets([wire])
    assert [f.request for f in back] == [op.request for op in ops]
    msg = back[3].message
    assert msg is not None and (msg.topic, msg.partition, msg.offset) == (
        "unlearn.deletions",
        2,
        103,
    )
    assert msg.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert decode_event(msg.value, DeletionRequested) == ops[3].request  # for a dead letter


def test_feature_removals_and_relabels_keep_their_type_and_place_through_model_ops():
    from pipeline.events import FeatureRemovalRequested, RelabelRequested
    from pipeline.ops import ForgetFeatures, Relabel

    when = datetime(2026, 1, 1, tzinfo=UTC)
    removal = FeatureRemovalRequested(request_id="f", model_id="a", columns=[3, "age"])
    relabel = RelabelRequested(
        request_id="l", model_id="a", labels=[{"record_id": "r1", "label": 2}]
    )
    ops = [
        _op(0),
        ForgetFeatures(removal, Message("unlearn.deletions", 1, 7, b"a", b"{}", when)),
        Relabel(relabel, Message("unlearn.deletions", 1, 8, b"a", b"{}", when)),
        _op(1),
    ]
    (batch,) = model_ops({"a": ops}, 100_000)
    back = forgets([decode_event(encode_event(batch), ModelOps)])
    assert [type(op) for op in back] == [Forget, ForgetFeatures, Relabel, Forget]
    assert back[1].request == removal and back[2].request == relabel
    assert back[1].message is not None and back[1].message.key == b"a"  # keyed by model
