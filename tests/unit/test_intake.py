"""The workers' edge: raw messages to events or dead letters, with a reason code."""

from __future__ import annotations

import base64
import json

import pytest

from pipeline.events import DeletionRequested, RecordAdded
from pipeline.intake import Message, Rejected, dead_letter, decode_message

GOOD = {
    "event_id": "e1",
    "model_id": "m",
    "record_id": "r1",
    "subject_id": "s",
    "features": [0.5, 1.0],
    "label": 1,
}


def msg(value: bytes | None) -> Message:
    return Message("t.unlearn.records", 2, 41, b"r1", value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1]", "schema"),
        (json.dumps({**GOOD, "type": "Receipt"}).encode(), "wrong_type"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "label"}).encode(), "schema"),
        (json.dumps(GOOD).replace("0.5", "NaN").encode(), "non_finite"),
        (json.dumps(GOOD).replace("0.5", "-Infinity").encode(), "non_finite"),
        (json.dumps({**GOOD, "schema": 2}).encode(), "schema"),
        (b"x" * 2_000, "oversized"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    result = decode_message(msg(value), RecordAdded, max_bytes=1_000)
    assert isinstance(result, Rejected) and result.reason == reason
    letter = dead_letter(result)
    assert (letter.topic, letter.partition, letter.offset) == ("t.unlearn.records", 2, 41)
    assert letter.reason == reason and letter.error
    assert base64.b64decode(letter.value_b64 or "") == value
    assert letter.event_id == dead_letter(result).event_id  # stable across replays


def test_good_messages_and_tombstones() -> None:
    event = decode_message(msg(json.dumps(GOOD).encode()), RecordAdded, max_bytes=1_000)
    assert isinstance(event, RecordAdded) and event.features == [0.5, 1.0]
    assert decode_message(msg(None), RecordAdded, max_bytes=1_000) is None
    req = decode_message(
        msg(b'{"request_id": "q", "subject_id": "s"}'), DeletionRequested, max_bytes=1_000
    )
    assert isinstance(req, DeletionRequested)
    assert msg(b"").where == "t.unlearn.records[2] offset=41"


def test_oversized_dead_letters_keep_a_prefix() -> None:
    big = b"y" * 100_000
    letter = dead_letter(Rejected(msg(big), "oversized", "too big"))
    assert len(base64.b64decode(letter.value_b64 or "")) == 65_536
    assert "first 65536 bytes kept" in letter.error
