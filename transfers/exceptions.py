"""Exceptions of the transfer service."""

from __future__ import annotations

from realtime.exceptions import Rejection, ServiceUnavailable

__all__ = [
    "DatabaseUnavailable",
    "IdempotencyInProgress",
    "IdempotencyKeyExpired",
    "IdempotencyKeyMismatch",
    "TransferRefused",
]


class TransferRefused(Rejection):
    """A business rule refused the transfer. It is stored against the key like a success."""

    status = 422


class IdempotencyKeyMismatch(Rejection):
    """The key was first used with a different transfer; the original is untouched."""

    code = "idempotency.key_mismatch"
    status = 422


class IdempotencyKeyExpired(TransferRefused):
    """The key belongs to a transfer whose stored response has expired; use a new key."""

    code = "idempotency.key_expired"
    status = 422


class IdempotencyInProgress(Rejection):
    """Another request with the same key is executing; retry after ``retry_after`` seconds."""

    code = "idempotency.in_progress"
    status = 409

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class DatabaseUnavailable(ServiceUnavailable):
    """The database could not be reached; nothing was stored against the key."""
