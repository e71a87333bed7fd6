"""Validation of the ``transfer`` object carried by every transfer command."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from realtime.exceptions import InvalidMessage

__all__ = ["InvalidAmount", "TransferRequest", "parse_transfer"]

_ACCOUNT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
# A plain decimal: no sign, no exponent, no leading zeros, at most 13
# integer digits and 2 decimal places (see transfers.models.MAX_BALANCE).
_AMOUNT_RE = re.compile(r"(0|[1-9][0-9]{0,12})(\.[0-9]{1,2})?")
# No control characters (C0, DEL, C1) and no lone surrogates, which JSON's
# \ud800 escapes can produce but UTF-8 cannot store.
_REFERENCE_RE = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{0,140}")

_REQUIRED = {"from_account", "to_account", "amount", "currency"}
_ALLOWED = _REQUIRED | {"reference"}


class InvalidAmount(InvalidMessage):
    """An amount that is not a positive decimal string with at most two decimal places."""

    code = "invalid_amount"


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A validated transfer object."""

    from_account: str
    to_account: str
    amount: Decimal
    currency: str
    reference: str

    def normalised(self) -> dict[str, str]:
        """Return the canonical form: what two requests must share to be the same transfer."""
        return {
            "amount": f"{self.amount:.2f}",
            "currency": self.currency,
            "from_account": self.from_account,
            "reference": self.reference,
            "to_account": self.to_account,
        }

    def fingerprint(self) -> str:
        """Hex SHA-256 of the canonical JSON form; key order and whitespace do not matter."""
        canonical = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _account_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ACCOUNT_ID_RE.fullmatch(value):
        raise InvalidMessage(f"transfer.{field} must be an account id of 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


def parse_amount(value: Any) -> Decimal:
    if not isinstance(value, str):
        raise InvalidAmount("transfer.amount must be a decimal string such as \"12.50\", not a JSON number")
    if not _AMOUNT_RE.fullmatch(value):
        raise InvalidAmount(
            "transfer.amount must be a plain decimal string with at most 13 integer digits and 2 decimal places"
        )
    amount = Decimal(value)
    if amount <= 0:
        raise InvalidAmount("transfer.amount must be greater than zero")
    return amount


def parse_transfer(value: Any) -> TransferRequest:
    """Validate a transfer object; raises InvalidMessage or InvalidAmount naming the field."""
    if not isinstance(value, dict):
        raise InvalidMessage("transfer must be a JSON object")
    missing = _REQUIRED - value.keys()
    if missing:
        raise InvalidMessage(f"transfer is missing {', '.join(sorted(missing))}")
    unknown = value.keys() - _ALLOWED
    if unknown:
        shown = ", ".join(repr(name[:32]) for name in sorted(unknown)[:3])
        raise InvalidMessage(f"transfer has {len(unknown)} unknown field(s): {shown}")

    from_account = _account_id(value["from_account"], "from_account")
    to_account = _account_id(value["to_account"], "to_account")
    if from_account == to_account:
        raise InvalidMessage("transfer.from_account and transfer.to_account must differ")
    amount = parse_amount(value["amount"])
    currency = value["currency"]
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        raise InvalidMessage("transfer.currency must be a three-letter ISO 4217 code such as \"USD\"")
    reference = value.get("reference")
    if reference is None:
        reference = ""
    elif not isinstance(reference, str) or not _REFERENCE_RE.fullmatch(reference):
        raise InvalidMessage("transfer.reference must be a string of at most 140 characters without control characters")

    return TransferRequest(
        from_account=from_account,
        to_account=to_account,
        amount=amount,
        currency=currency,
        reference=reference,
    )
