"""Exceptions of the identity, protocol and replay layers.

Every rejection a client can see is a ``Rejection``: it carries the stable
``code`` of the wire protocol, the HTTP status the API responds with, and any
extra members that the reply includes (``server_time``, ``expected_seq``).
The WebSocket consumer and the HTTP views render the same objects.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied

__all__ = [
    "CertificateInvalid",
    "IdentityRejected",
    "InvalidMessage",
    "Rejection",
    "ReplayRejected",
    "ReplayStoreUnavailable",
    "ServiceUnavailable",
]


class Rejection(Exception):
    """A command that is refused with a stable code; nothing was executed."""

    code: str = "invalid_message"
    status: int = 400

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        """Return the code, the detail and the extra members as one dict."""
        return {"code": self.code, "detail": self.detail, **self.extra}


class InvalidMessage(Rejection, ValueError):
    """A frame or request body that is not a well-formed command."""

    code = "invalid_message"
    status = 400


class ReplayRejected(Rejection):
    """The replay engine found the command's timestamp, nonce or sequence unacceptable."""

    status = 409


class ServiceUnavailable(Rejection):
    """A dependency (replay store or database) could not be reached; nothing executed."""

    code = "unavailable"
    status = 503


class ReplayStoreUnavailable(ServiceUnavailable):
    """The replay store did not reply in time or replied with an error.

    Replay protection fails closed: a command whose check did not complete is
    never executed.
    """


class CertificateInvalid(ValueError):
    """A certificate that does not parse or is outside its validity dates."""


class IdentityRejected(Rejection, PermissionDenied):
    """The connection carries no usable identity of an active registered client."""

    code = "identity.rejected"
    status = 403
