"""Strict parsing of the command envelope."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.exceptions import InvalidMessage
from realtime.protocol import (
    MAX_SAFE_INTEGER,
    parse_idempotency_key,
    parse_json_object,
    parse_json_text,
    parse_nonce,
    parse_seq,
    parse_timestamp,
)


@pytest.mark.parametrize("value", [1, 2, MAX_SAFE_INTEGER])
def test_seq_accepts(value: int) -> None:
    assert parse_seq(value) == value


@pytest.mark.parametrize("value", [0, -1, MAX_SAFE_INTEGER + 1, True, False, 1.0, Decimal("7.0"), "7", None, [1], {"a": 1}])
def test_seq_rejects(value: object) -> None:
    with pytest.raises(InvalidMessage):
        parse_seq(value)


@pytest.mark.parametrize("value", [-1, True, "1", 1.5, None])
def test_timestamp_rejects(value: object) -> None:
    with pytest.raises(InvalidMessage):
        parse_timestamp(value)


@pytest.mark.parametrize("value", ["a" * 16, "A-b_c" * 4, "z" * 64])
def test_nonce_accepts(value: str) -> None:
    assert parse_nonce(value) == value


@pytest.mark.parametrize("value", ["a" * 15, "a" * 65, "a" * 15 + "!", "a" * 16 + "\n", "ä" * 16, 1234567890123456, None])
def test_nonce_rejects(value: object) -> None:
    with pytest.raises(InvalidMessage):
        parse_nonce(value)


@pytest.mark.parametrize("value", ["", "k" * 256, "tab\tkey", "del\x7f", "é", 5])
def test_idempotency_key_rejects(value: object) -> None:
    with pytest.raises(InvalidMessage):
        parse_idempotency_key(value)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"outer": {"a": 1, "a": 1}}',
        '[{"a": 1, "a": 1}]',
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": -Infinity}',
        '{"a": ' + "1" * 5000 + "}",
        "[" * 50_000 + "]" * 50_000,
        b"\xff\xfe",
        "",
        "{",
    ],
)
def test_json_rejects(text: str | bytes) -> None:
    with pytest.raises(InvalidMessage):
        parse_json_text(text)


def test_json_keeps_floats_exact() -> None:
    assert parse_json_object('{"a": 0.1}')["a"] == Decimal("0.1")


def test_json_object_required() -> None:
    with pytest.raises(InvalidMessage, match="expected a JSON object"):
        parse_json_object("[1]")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_json_parser_raises_only_invalid_message(data: str | bytes) -> None:
    try:
        parse_json_text(data)
    except InvalidMessage:
        pass
