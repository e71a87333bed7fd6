"""Strict parsing of the command envelope shared by the WebSocket and HTTP APIs.

Everything here treats its input as hostile: each function either returns a
value of the documented type and range or raises ``InvalidMessage`` naming
the field. Nothing here touches the replay store or the database, so a
malformed command never consumes a nonce or a sequence number.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, NoReturn

from .exceptions import InvalidMessage

__all__ = [
    "MAX_SAFE_INTEGER",
    "parse_idempotency_key",
    "parse_json_object",
    "parse_nonce",
    "parse_seq",
    "parse_timestamp",
    "parse_json_text",
]

# Integers above 2**53 - 1 lose precision in JavaScript clients and in the
# replay store's Lua arithmetic (double precision), so no field accepts them.
MAX_SAFE_INTEGER = 2**53 - 1

_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Printable ASCII without '"' and '\\', and no space at either end. HTTP
# strips spaces around header values and reads a quoted value as a
# structured-field string, so only keys of this form name the same key on
# the WebSocket and in the Idempotency-Key header.
_IDEMPOTENCY_KEY_RE = re.compile(r"(?=[^ ])[\x20\x21\x23-\x5b\x5d-\x7e]{1,255}(?<=[^ ])")


def _reject_constant(name: str) -> NoReturn:
    raise InvalidMessage(f"JSON constant {name} is not allowed")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Truncated: the detail goes back in the rejection, and a key can be as long as the frame.
            raise InvalidMessage(f"duplicate JSON key {key[:32]!r}")
        result[key] = value
    return result


def parse_json_text(text: str | bytes) -> Any:
    """Decode JSON, rejecting duplicate keys, NaN/Infinity and oversized numbers.

    Floats are kept as ``Decimal`` so that no field can be rounded on the way
    in. Integers with more than 4300 digits, nesting deeper than the
    interpreter's recursion limit and anything but UTF-8 raise InvalidMessage
    too. ``json.loads`` would also accept UTF-16 and UTF-32 bytes, so bytes are
    decoded here first.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage("body is not valid UTF-8") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_reject_constant,
            parse_float=Decimal,
        )
    except InvalidMessage:
        raise
    except (ValueError, RecursionError) as exc:
        # json.JSONDecodeError, UnicodeDecodeError and the int-digits limit
        # are all ValueError subclasses.
        raise InvalidMessage(f"not valid JSON: {exc}") from None


def parse_json_object(text: str | bytes) -> dict[str, Any]:
    value = parse_json_text(text)
    if not isinstance(value, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(value).__name__}")
    return value


def _strict_int(field: str, value: Any, minimum: int) -> int:
    # bool is a subclass of int in Python, and JSON true must not count as 1.
    if type(value) is not int:
        raise InvalidMessage(f"{field} must be an integer, got {_describe(value)}")
    if value < minimum or value > MAX_SAFE_INTEGER:
        raise InvalidMessage(f"{field} must be between {minimum} and {MAX_SAFE_INTEGER}, got {value}")
    return value


def parse_seq(value: Any) -> int:
    """Return a sequence number: an integer from 1 to 2**53 - 1."""
    return _strict_int("seq", value, 1)


def parse_timestamp(value: Any, field: str = "ts") -> int:
    """Return a timestamp in Unix milliseconds: an integer from 0 to 2**53 - 1."""
    return _strict_int(field, value, 0)


def parse_nonce(value: Any, field: str = "nonce") -> str:
    """Return a nonce: 16 to 64 characters of ``[A-Za-z0-9_-]``."""
    if not isinstance(value, str) or not _NONCE_RE.fullmatch(value):
        raise InvalidMessage(f"{field} must be 16-64 characters of A-Z, a-z, 0-9, '_' or '-', got {_describe(value)}")
    return value


def parse_idempotency_key(value: Any, field: str = "idempotency_key") -> str:
    """Return an idempotency key: 1 to 255 printable ASCII characters other than '"' and '\\',
    with no space at either end."""
    if not isinstance(value, str) or not _IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise InvalidMessage(
            f"{field} must be 1-255 printable ASCII characters other than '\"' and '\\', "
            f"not starting or ending with a space; got {_describe(value)}"
        )
    return value


def _describe(value: Any) -> str:
    """Describe a rejected value briefly, without echoing large or sensitive input."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer" if len(str(value)) > 20 else repr(value)
    if isinstance(value, Decimal):
        return "a number with a fraction or exponent"
    return f"a JSON {type(value).__name__}"
