"""Request bodies: good ones for each server, hostile ones the endpoint must refuse, and the file
format scripts/wrk/post_bodies.lua reads."""

from __future__ import annotations

import json
from collections.abc import Iterable


def torchserve_body(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def mlflow_body(text: str) -> bytes:
    return json.dumps({"dataframe_records": [{"text": text}]}).encode()


def hostile_bodies() -> dict[str, bytes]:
    """Bodies the endpoint must refuse with a 4xx (the request contract in docs/serving.md), never a 5xx."""
    return {
        "lone_surrogate": b'{"text": "\\ud800"}',
        "deep_array": b"[" * 100_000,
        "nested_objects": b'{"a": ' * 5_000 + b"1" + b"}" * 5_000,
        "invalid_utf8": b'{"text": "caf\xc3\x28 \xff\xfe"}',
        "nul_byte": b'{"text": "a\x00b"}',
        "huge_integer": b'{"text": ' + b"9" * 100_000 + b"}",
        "huge_float": b'{"text": 1e999999}',
        "nan": b'{"text": NaN}',
        "empty_body": b"",
        "non_object": b'["a list", "not an object"]',
        "texts_with_null": b'{"texts": ["fine", null]}',
        "too_many_texts": json.dumps({"texts": ["fine"] * 65}).encode(),
        "oversized_text": json.dumps({"text": "word " * 5_000}).encode(),
        "missing_text": b'{"title": "no text"}',
        "over_1_mib": b'{"text": "' + b"x" * (1 << 20) + b'"}',
    }


def encode_bodies(bodies: Iterable[bytes]) -> bytes:
    """The bodies file post_bodies.lua reads: "<byte length>\\n<bytes>" per body, any bytes allowed."""
    return b"".join(b"%d\n%s" % (len(body), body) for body in bodies)


def decode_bodies(data: bytes) -> list[bytes]:
    """Inverse of encode_bodies (what the Lua script does), for tests."""
    bodies, pos = [], 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        length = int(data[pos:newline])
        bodies.append(data[newline + 1 : newline + 1 + length])
        pos = newline + 1 + length
    return bodies
