"""Event schemas: what is accepted, what is rejected, the messages, the JSON Schema files."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import SchemaError
from pipeline.events import (
    EVENT_TYPES,
    MAX_FEATURES,
    ClassRemoved,
    ClientRemoved,
    ClientStats,
    DeadLetter,
    DeletionRequested,
    Event,
    FeatureRemovalRequested,
    ModelOps,
    ModelPublished,
    Origin,
    Receipt,
    ReceiptStatus,
    RecordAdded,
    RelabelRequested,
    RetrainCompleted,
    RetrainRequested,
    RoutedRequest,
    decode_event,
    decode_request,
    encode_event,
)
from pipeline.schemas import SCHEMA_DIR, json_schemas, render_schema

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def examples() -> list[Event]:
    return [
        RecordAdded(
            event_id="e1",
            model_id="churn",
            record_id="r1",
            subject_id="alice",
            features=[0.5, -1.0, 3e10],
            label=1,
            ts=NOW,
        ),
        DeletionRequested(request_id="q1", subject_id="alice", reason="GDPR Art. 17"),
        DeletionRequested(request_id="q2", record_ids=["r1", "r2"], model_ids=["churn"]),
        FeatureRemovalRequested(request_id="q3", model_id="churn", columns=[2, "zip_code"]),
        RelabelRequested(
            request_id="q4", model_id="churn", labels=[{"record_id": "r1", "label": 0}]
        ),
        ModelPublished(
            event_id="p1",
            model_id="churn",
            version=3,
            parent=2,
            method="fisher",
            n_records=10,
            seq=44,
            certificate=0.01,
            budget=0.5,
            holdout_metrics={"accuracy": 0.93},
        ),
        RetrainRequested(event_id="t1", model_id="churn", reason="budget", snapshot_seq=40),
        RetrainCompleted(
            event_id="t2",
            model_id="churn",
            version=4,
            snapshot_seq=40,
            applied_seq=47,
            duration_s=12.5,
        ),
        Receipt(
            event_id="c1",
            request_id="q1",
            model_id="churn",
            status=ReceiptStatus.APPLIED,
            version=3,
            method="influence",
            certificate=0.01,
            budget=0.5,
            n_records=2,
            received_at=NOW,
            due_at=NOW,
            completed_at=NOW,
        ),
        DeadLetter(
            event_id="d1",
            topic="unlearn.records",
            partition=2,
            offset=17,
            value_b64="eyJ4Ijo=",
            error="not valid JSON",
            reason="malformed",
        ),
        ClientStats(
            event_id="f1",
            model_id="fed",
            client_id="hospital-a",
            round=3,
            n=120,
            gradient=[0.1, 0.2],
            hessian=[1.0, 0.0, 0.0, 1.0],
        ),
        ClientRemoved(event_id="f2", model_id="fed", client_id="hospital-a"),
        ClassRemoved(event_id="f3", model_id="fed", class_label="cat"),
        ModelOps(
            event_id="ops:churn:unlearn.deletions:1:40-41:abc",
            model_id="churn",
            requests=[
                RoutedRequest(
                    request=DeletionRequested(request_id="q1", subject_id="s"),
                    origin=Origin(topic="unlearn.deletions", partition=1, offset=40),
                )
            ],
        ),
    ]


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.type)
def test_round_trip(event: Event) -> None:
    data = encode_event(event)
    payload = json.loads(data)
    assert payload["schema"] == 1 and payload["type"] == type(event).__name__
    assert decode_event(data) == event
    assert decode_event(data, type(event)) == event
    assert event.idempotency_key


def test_every_event_type_has_an_example_and_an_id() -> None:
    assert {type(e) for e in examples()} == set(EVENT_TYPES)
    for cls in EVENT_TYPES:
        fields = cls.model_fields
        assert "schema_version" in fields and ("event_id" in fields or "request_id" in fields)
        assert fields.get("event_id", fields.get("request_id")).is_required()


def test_events_are_immutable() -> None:
    event = examples()[0]
    with pytest.raises(Exception, match="frozen"):
        event.model_id = "other"  # type: ignore[misc]


def record_json(**changes: object) -> bytes:
    payload = json.loads(encode_event(examples()[0]))
    payload.update(changes)
    return json.dumps(payload).encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_features_are_rejected(bad: float) -> None:
    with pytest.raises(SchemaError) as err:
        decode_event(record_json(features=[1.0, bad]))
    assert err.value.field == "features.1"
    assert "finite" in err.value.reason and "NaN" in err.value.reason
    with pytest.raises(Exception, match="finite"):
        RecordAdded(
            event_id="e", model_id="m", record_id="r", subject_id="s", features=[bad], label=0
        )


def test_oversized_features_are_rejected_with_the_limit() -> None:
    with pytest.raises(SchemaError) as err:
        decode_event(record_json(features=[0.0] * (MAX_FEATURES + 1)))
    assert err.value.field == "features"
    assert str(MAX_FEATURES) in err.value.reason and "split" in err.value.reason
    assert len(str(err.value)) < 300  # the value is abbreviated


def test_deletion_needs_a_subject_or_records() -> None:
    with pytest.raises(SchemaError) as err:
        decode_event(b'{"type": "DeletionRequested", "request_id": "q"}')
    assert err.value.field == "<event>" and "subject_id or record_ids" in err.value.reason
    with pytest.raises(SchemaError, match="at least 1 item"):
        decode_event(b'{"type": "DeletionRequested", "request_id": "q", "record_ids": []}')


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (b"{not json", "<event>", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "<event>", "not valid UTF-8 JSON"),
        (b"[1, 2]", "<event>", "JSON object"),
        (b'{"schema": 2, "type": "RecordAdded"}', "schema", "unsupported schema version"),
        (b'{"type": "Surprise"}', "type", "unknown event type"),
        (b'{"event_id": "x"}', "type", "missing"),
    ],
)
def test_malformed_input(data: bytes, field: str, reason: str) -> None:
    with pytest.raises(SchemaError) as err:
        decode_event(data)
    assert err.value.field == field and reason in err.value.reason


def test_unknown_fields_and_bad_ids_are_rejected() -> None:
    with pytest.raises(SchemaError) as err:
        decode_event(record_json(colour="blue"))
    assert err.value.field == "colour"
    with pytest.raises(SchemaError) as err:
        decode_event(record_json(model_id="{churn}"))
    assert err.value.field == "model_id"
    with pytest.raises(SchemaError) as err:
        decode_event(record_json(event_id=""))
    assert err.value.field == "event_id"


def test_expected_type_is_enforced_and_type_may_be_omitted() -> None:
    payload = json.loads(encode_event(examples()[1]))
    with pytest.raises(SchemaError, match="carries RecordAdded"):
        decode_event(json.dumps(payload), RecordAdded)
    del payload["type"]
    assert decode_event(json.dumps(payload), DeletionRequested).subject_id == "alice"


def test_rejected_receipt_needs_a_reason() -> None:
    with pytest.raises(Exception, match="needs a reason"):
        Receipt(
            event_id="c",
            request_id="q",
            model_id="m",
            status="rejected",
            received_at=NOW,
            due_at=NOW,
        )
    assert not ReceiptStatus.PENDING_RETRAIN.final and ReceiptStatus.ALREADY_ABSENT.final


def test_client_stats_hessian_must_be_square() -> None:
    with pytest.raises(Exception, match="expected 2 \\* 2"):
        ClientStats(
            event_id="f",
            model_id="m",
            client_id="c",
            round=0,
            n=1,
            gradient=[0.0, 1.0],
            hessian=[1.0, 0.0, 1.0],
        )


@given(
    features=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50),
    label=st.one_of(
        st.integers(-5, 5),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(min_size=1, max_size=5),
    ),
)
def test_any_finite_record_round_trips(features: list[float], label: object) -> None:
    event = RecordAdded(
        event_id="e", model_id="m", record_id="r", subject_id="s", features=features, label=label
    )
    decoded = decode_event(encode_event(event), RecordAdded)
    assert decoded.features == features and decoded.label == label
    assert type(decoded.label) is type(label)


# ---- the committed JSON Schemas in docs/schemas/ -----------------------------------


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_committed_schema_matches_the_model(name: str) -> None:
    path = SCHEMA_DIR / f"{name}.json"
    assert path.exists(), f"missing {path}: run python -m pipeline.schemas"
    assert path.read_text() == render_schema(json_schemas()[name]), (
        f"{path} is stale: regenerate with python -m pipeline.schemas"
    )


def test_no_stray_schema_files() -> None:
    assert {p.stem for p in SCHEMA_DIR.glob("*.json")} == {c.__name__ for c in EVENT_TYPES}


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.type)
def test_examples_validate_against_their_schema(event) -> None:
    schema = json.loads((SCHEMA_DIR / f"{event.type}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(json.loads(encode_event(event)))


def test_schema_rejects_a_deletion_without_target() -> None:
    schema = json.loads((SCHEMA_DIR / "DeletionRequested.json").read_text())
    bad = {
        "schema": 1,
        "type": "DeletionRequested",
        "request_id": "q",
        "subject_id": None,
        "record_ids": None,
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("bad", ["a}b", "{r:x}", "tab\there"])
def test_ids_with_braces_or_control_characters_are_refused(bad):
    """Braces delimit Redis Cluster hash tags and would let a key match another's ACL rule."""
    payload = {"request_id": bad, "subject_id": "s"}
    with pytest.raises(SchemaError) as caught:
        decode_event(json.dumps(payload), DeletionRequested)
    assert caught.value.field == "request_id"


def test_hostile_payloads_are_schema_errors_not_crashes():
    """Nesting too deep to parse and integers too long to convert are one message's
    problem: a SchemaError that sends it to the dead-letter topic, nothing else."""
    for raw in (b"[" * 10_000 + b"]" * 10_000, b'{"subject_id": ' + b"9" * 4_400 + b"}"):
        with pytest.raises(SchemaError, match="not valid UTF-8 JSON"):
            decode_event(raw, DeletionRequested)


def test_a_receipt_built_from_the_longest_ids_is_valid():
    rcpt = Receipt(
        event_id=f"rcpt:{'m' * 128}:{'r' * 256}:already_absent",
        request_id="r" * 256,
        model_id="m" * 128,
        status=ReceiptStatus.ALREADY_ABSENT,
        received_at=datetime.now(UTC),
        due_at=datetime.now(UTC),
    )
    assert decode_event(encode_event(rcpt)) == rcpt


def test_a_retrain_request_has_one_constructor():
    first = RetrainRequested.new("churn", "budget", 40)
    second = RetrainRequested.new("churn", "budget", 40)
    assert (first.model_id, first.reason, first.snapshot_seq) == ("churn", "budget", 40)
    assert first.event_id.startswith("budget-") and first.event_id != second.event_id
    assert decode_event(encode_event(first)) == first


# ---- the requests topic: deletions, feature removals, relabels by type ----------------


def test_the_requests_topic_decodes_each_request_by_type() -> None:
    removal = FeatureRemovalRequested(request_id="q3", model_id="churn", columns=[2, "zip"])
    relabel = RelabelRequested(
        request_id="q4", model_id="churn", labels=[{"record_id": "r1", "label": "cat"}]
    )
    assert decode_request(encode_event(removal)) == removal
    assert decode_request(encode_event(relabel)) == relabel
    # a producer written before the other requests leaves `type` out: a deletion
    legacy = decode_request(json.dumps({"request_id": "q1", "subject_id": "alice"}))
    assert isinstance(legacy, DeletionRequested)
    with pytest.raises(SchemaError) as err:
        decode_request(encode_event(RetrainRequested.new("churn", "operator", 0)))
    assert err.value.field == "type" and "FeatureRemovalRequested" in err.value.reason


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"columns": []}, "columns"),
        ({"columns": [-1]}, "columns.0"),
        ({"columns": [""]}, "columns.0"),
    ],
)
def test_a_feature_removal_names_columns(payload, field) -> None:
    event = {"type": "FeatureRemovalRequested", "request_id": "q", "model_id": "m", **payload}
    with pytest.raises(SchemaError) as err:
        decode_request(json.dumps(event))
    assert err.value.field.startswith(field.split(".")[0])


def test_a_relabel_names_each_record_once_with_a_finite_label() -> None:
    twice = [{"record_id": "r1", "label": 1}, {"record_id": "r1", "label": 0}]
    with pytest.raises(SchemaError, match="named twice"):
        decode_request(
            json.dumps(
                {"type": "RelabelRequested", "request_id": "q", "model_id": "m", "labels": twice}
            )
        )
    with pytest.raises(SchemaError, match="finite"):
        decode_request(
            '{"type": "RelabelRequested", "request_id": "q", "model_id": "m", '
            '"labels": [{"record_id": "r1", "label": NaN}]}'
        )


def test_an_old_receipt_without_the_new_fields_is_still_read() -> None:
    old = {
        "schema": 1,
        "ts": NOW.isoformat(),
        "type": "Receipt",
        "event_id": "c1",
        "request_id": "q1",
        "model_id": "churn",
        "status": "applied",
        "received_at": NOW.isoformat(),
        "due_at": NOW.isoformat(),
    }
    receipt = decode_event(json.dumps(old), Receipt)
    assert receipt.operation is None and receipt.columns is None and receipt.relabelled is None
