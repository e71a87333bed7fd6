"""Fuzzing the command parsers: every input is a typed rejection or a valid command.

Covers the JSON envelope and field parsers (realtime.protocol), the transfer
object (transfers.validation), the WebSocket frame parser and the consumer
itself, driven in process, and the HTTP replay headers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.transfers import ResumeFrame, TransferConsumer, TransferFrame, parse_frame
from realtime.exceptions import InvalidMessage
from realtime.identity import ClientIdentity
from realtime.protocol import MAX_SAFE_INTEGER, parse_idempotency_key, parse_nonce, parse_seq, parse_timestamp
from transfers.validation import TransferRequest, parse_transfer
from tests.support.identities import register_identity
from transfers.views import _idempotency_key, _replay_check

# What an idempotency key may be: printable ASCII except '"' and '\\', no space at either end.
IDEMPOTENCY_KEY = r"[\x21\x23-\x5b\x5d-\x7e]([\x20\x21\x23-\x5b\x5d-\x7e]{0,253}[\x21\x23-\x5b\x5d-\x7e])?"

# Rejection details go back to the client, so none may echo a large input.
MAX_DETAIL_CHARS = 300
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def valid_transfer() -> dict[str, Any]:
    return {"from_account": "A-1", "to_account": "B-1", "amount": "1.00", "currency": "USD"}


def valid_frames() -> st.SearchStrategy[dict[str, Any]]:
    transfer = st.fixed_dictionaries(
        {
            "type": st.just("transfer"),
            "seq": st.integers(1, MAX_SAFE_INTEGER),
            "ts": st.integers(0, MAX_SAFE_INTEGER),
            "nonce": st.from_regex(NONCE_RE, fullmatch=True),
            "idempotency_key": st.from_regex(IDEMPOTENCY_KEY, fullmatch=True),
            "transfer": st.just(valid_transfer()),
        }
    )
    resume = st.fixed_dictionaries(
        {
            "type": st.just("resume"),
            "session": st.from_regex(TOKEN_RE, fullmatch=True),
            "seq": st.integers(1, MAX_SAFE_INTEGER),
            "ts": st.integers(0, MAX_SAFE_INTEGER),
            "nonce": st.from_regex(NONCE_RE, fullmatch=True),
        }
    )
    return transfer | resume


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame with one to three fields replaced, removed or added."""
    frame = draw(valid_frames())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "remove", "add", "replace in transfer"]))
        if action == "replace":
            frame[draw(st.sampled_from(sorted(frame)))] = draw(json_values)
        elif action == "remove" and frame:
            del frame[draw(st.sampled_from(sorted(frame)))]
        elif action == "add":
            frame[draw(st.text(max_size=40))] = draw(json_values)
        elif isinstance(frame.get("transfer"), dict):
            field = draw(st.sampled_from(["from_account", "to_account", "amount", "currency", "reference", "fee"]))
            frame["transfer"][field] = draw(json_values | st.from_regex(r"-?[0-9]{0,17}(\.[0-9]{0,3})?", fullmatch=True))
    return frame


def assert_valid_frame(frame: TransferFrame | ResumeFrame) -> None:
    assert 1 <= frame.seq <= MAX_SAFE_INTEGER
    assert 0 <= frame.ts <= MAX_SAFE_INTEGER
    assert NONCE_RE.fullmatch(frame.nonce)
    if isinstance(frame, ResumeFrame):
        assert TOKEN_RE.fullmatch(frame.session)
        return
    assert re.fullmatch(IDEMPOTENCY_KEY, frame.idempotency_key)
    assert_valid_transfer(frame.transfer)


def assert_valid_transfer(request: TransferRequest) -> None:
    assert request.amount > 0
    assert request.amount == request.amount.quantize(Decimal("0.01"))
    assert request.amount < Decimal(10) ** 15
    assert re.fullmatch(r"[A-Z]{3}", request.currency)
    assert request.from_account != request.to_account
    assert len(request.reference) <= 140


def assert_typed_rejection(exc: BaseException) -> None:
    assert isinstance(exc, InvalidMessage), f"{type(exc).__name__} escaped the parser: {exc!r}"
    assert exc.code in {"invalid_message", "invalid_amount"}
    assert exc.status == 400
    assert 0 < len(exc.detail) <= MAX_DETAIL_CHARS


def parse_or_reject(text: str | None, data: bytes | None = None) -> None:
    try:
        frame = parse_frame(text, data)
    except Exception as exc:  # any other type is the failure this test looks for
        assert_typed_rejection(exc)
        return
    assert_valid_frame(frame)


# --- frame parser ---------------------------------------------------------------


@given(st.text(max_size=300))
@settings(max_examples=400)
def test_parse_frame_arbitrary_text(text: str) -> None:
    parse_or_reject(text)


@given(json_values)
@settings(max_examples=400)
def test_parse_frame_arbitrary_json(value: Any) -> None:
    parse_or_reject(json.dumps(value))


@given(mutated_frames())
@settings(max_examples=600)
def test_parse_frame_mutated_frames(frame: dict[str, Any]) -> None:
    parse_or_reject(json.dumps(frame))


@given(valid_frames())
@settings(max_examples=200)
def test_parse_frame_accepts_valid_frames(frame: dict[str, Any]) -> None:
    parsed = parse_frame(json.dumps(frame))
    assert_valid_frame(parsed)
    assert parsed.seq == frame["seq"]
    assert parsed.nonce == frame["nonce"]


@given(st.binary(max_size=200))
@settings(max_examples=100)
def test_parse_frame_binary_rejected(data: bytes) -> None:
    with pytest.raises(InvalidMessage):
        parse_frame(None, data)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "transfer", "seq": 1, "seq": 2}',
        '{"type": "resume", "' + "k" * 5000 + '": 1, "' + "k" * 5000 + '": 2}',
        '{"type": "transfer", "ts": 1e400}',
        '{"type": "transfer", "seq": 1.0}',
        '{"type": "transfer", "seq": -0}',
        '{"type": "resume", "session": "' + "A" * 65 + '"}',
        '{"type": "resume", "session": "' + "A" * 21 + '"}',
        '"\\ud800"',
        "\ufeff{}",
        "[" * 100_000,
    ],
)
def test_parse_frame_edge_cases(text: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_frame(text)
    assert_typed_rejection(caught.value)


# --- field parsers ----------------------------------------------------------------


@pytest.mark.parametrize("parse", [parse_seq, parse_timestamp, parse_nonce, parse_idempotency_key, parse_transfer])
@given(value=json_values)
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_field_parsers_typed(parse: Any, value: Any) -> None:
    try:
        parsed = parse(value)
    except Exception as exc:
        assert_typed_rejection(exc)
        return
    if parse in (parse_seq, parse_timestamp):
        assert type(parsed) is int
        assert 0 <= parsed <= MAX_SAFE_INTEGER
    elif parse is parse_transfer:
        assert_valid_transfer(parsed)
    else:
        assert isinstance(parsed, str)


# --- HTTP replay headers ----------------------------------------------------------


class _Request:
    """The part of an HttpRequest the header parsers read: the ASGI scope's headers."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.scope = {"headers": headers}


IDENTITY = ClientIdentity(
    client_id=1,
    name="alice",
    fingerprint_sha256="0" * 64,
    not_after=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc),
    source="tls",
)
HEADER_NAMES = [
    b"x-request-timestamp",
    b"x-request-nonce",
    b"x-request-session",
    b"x-request-sequence",
    b"idempotency-key",
]
header_values = st.one_of(
    st.binary(max_size=80),
    st.from_regex(rb"[0-9]{1,20}", fullmatch=True),
    st.from_regex(rb"[A-Za-z0-9_-]{14,66}", fullmatch=True),
    st.from_regex(rb'"[ -~]{0,40}"', fullmatch=True),
)


@given(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values), max_size=7))
@settings(max_examples=500)
def test_http_replay_headers_typed(headers: list[tuple[bytes, bytes]]) -> None:
    request = _Request(headers)
    for parse in (lambda: _replay_check(request, IDENTITY), lambda: _idempotency_key(request)):  # type: ignore[arg-type]
        try:
            parsed = parse()
        except Exception as exc:
            assert isinstance(exc, InvalidMessage), f"{type(exc).__name__} escaped the parser: {exc!r}"
            assert 0 < len(exc.detail) <= MAX_DETAIL_CHARS
            continue
        if isinstance(parsed, str):
            assert re.fullmatch(r"[\x20-\x7e]{1,255}", parsed)
        else:
            assert NONCE_RE.fullmatch(parsed.nonce)
            assert (parsed.session is None) == (parsed.seq is None)


# --- the consumer, in process -------------------------------------------------------


@pytest.fixture
def registered_client(transactional_db: Any) -> ClientIdentity:
    from realtime.models import Client
    from transfers.models import Account

    identity = register_identity("fuzz", fingerprint="f" * 64, not_after=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc))
    client = Client.objects.get(pk=identity.client_id)
    Account.objects.create(id="A-1", owner=client, currency="USD", balance=Decimal("1000000"), opening_balance=Decimal("1000000"))
    Account.objects.create(id="B-1", owner=client, currency="USD", balance=Decimal(0), opening_balance=Decimal(0))
    return identity


REPLY_CODES = {
    "invalid_message",
    "invalid_amount",
    "replay.timestamp_out_of_window",
    "replay.nonce_reused",
    "replay.sequence_reused",
    "replay.sequence_too_old",
    "session.unknown",
    "transfer.account_not_found",
    "transfer.forbidden",
    "transfer.currency_mismatch",
    "transfer.insufficient_funds",
    "idempotency.key_mismatch",
}


async def exchange(identity: ClientIdentity, text: str | None, data: bytes | None) -> dict[str, Any]:
    communicator = WebsocketCommunicator(TransferConsumer.as_asgi(), "/ws/v1/transfers/")
    communicator.scope["client_identity"] = identity
    connected, _ = await communicator.connect()
    assert connected
    welcome = json.loads(await communicator.receive_from())
    assert welcome["type"] == "welcome"

    # send_to() rejects an empty text frame, which a client can send.
    if text is None:
        await communicator.send_input({"type": "websocket.receive", "bytes": data})
    else:
        await communicator.send_input({"type": "websocket.receive", "text": text})
    reply = json.loads(await communicator.receive_from(timeout=5))
    # Exactly one reply, and the socket stays open.
    assert await communicator.receive_nothing(timeout=0.02)
    await communicator.disconnect()
    return reply


@pytest.mark.django_db(transaction=True)
@given(
    message=st.one_of(
        st.text(max_size=200).map(lambda text: (text, None)),
        json_values.map(lambda value: (json.dumps(value), None)),
        mutated_frames().map(lambda frame: (json.dumps(frame), None)),
        st.binary(min_size=1, max_size=50).map(lambda data: (None, data)),
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_consumer_replies_once_with_typed_frame(registered_client: ClientIdentity, message: tuple[str | None, bytes | None]) -> None:
    text, data = message
    reply = asyncio.run(exchange(registered_client, text, data))
    assert reply["type"] in {"rejected", "transfer.executed", "resumed"}
    if reply["type"] == "rejected":
        assert reply["code"] in REPLY_CODES
        assert 0 < len(reply["detail"]) <= MAX_DETAIL_CHARS
        assert reply["seq"] is None or 1 <= reply["seq"] <= MAX_SAFE_INTEGER
