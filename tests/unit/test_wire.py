"""CommandPacker writes the bytes redis-py's own serializer writes (hermetic)."""

from __future__ import annotations

import pytest
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import DataError

from pipeline.store.wire import CommandPacker

_ENCODER = Encoder("utf-8", "strict", False)
REDIS_PY = HiredisRespSerializer(PythonRespSerializer(6000, _ENCODER.encode).pack, _ENCODER.encode)

COMMANDS = [
    ("SET", "unlearn:{m}:rcpt:q", b'{"status": "applied"}', "EX", 63_072_000, "NX"),
    ("HSET", "unlearn:{zs:ab}:supp:*", "q1", 1764897600.123456),
    ("ZADD", "z", 0.1, "m", 1e-300, "n", 1e22, "o", -0.0, "p", float("inf"), "q"),
    ("SET", "k", 0.30000000000000004),
    ("SET", "k", 123456789012345678901234567890),
    ("SET", "ünïcode", "välue"),
    ("SET", b"k", b"\x00\xff\r\n"),
    ("CLIENT SETNAME", "worker"),
    (b"CLIENT SETNAME", b"worker"),
    ("SET", "k", bytearray(b"x")),
    ("SET", "k", memoryview(b"abc")),
    ("MSET", *(f"k{i}" for i in range(500)), *(b"v" * 100 for _ in range(500))),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_the_same_bytes_as_redis_py(command: tuple) -> None:
    assert b"".join(CommandPacker().pack(*command)) == b"".join(
        bytes(chunk) for chunk in REDIS_PY.pack(*command)
    )


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_redis_py_refuses_is_refused_with_its_error(bad: object) -> None:
    with pytest.raises(DataError) as ours:
        CommandPacker().pack("SET", "k", bad)
    with pytest.raises(DataError) as theirs:
        REDIS_PY.pack("SET", "k", bad)
    assert str(ours.value) == str(theirs.value)
