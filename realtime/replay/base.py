"""The replay store interface that every backend implements.

A check decides, atomically and in this order:

1. the timestamp lies within ``max_skew_ms`` of the store's clock, on both
   sides, boundaries included;
2. the nonce has not been recorded in the identity's namespace;
3. when the check names a session, the sequence number is above the highest
   seen in that session, or at most ``seq_window - 1`` below it and not yet
   seen (the anti-replay window of RFC 4303, section 3.4.3).

Only when all checks pass does the store record the nonce, until its
timestamp can no longer pass check 1 (``ts + max_skew_ms``), and the
sequence number. A rejected check records nothing.

A session expires ``session_ttl_ms`` after its last accepted check, on the
store's clock; from then on it counts as unknown. Every expiry is decided
against the store's clock, the injectable one included, so a store gives the
same decisions whatever the real time is.
"""

from __future__ import annotations

import abc
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import ReplayRejected
from ..protocol import MAX_SAFE_INTEGER

__all__ = [
    "Clock",
    "REJECTION_DETAILS",
    "ReplayCheck",
    "ReplayStore",
    "ReplayVerdict",
    "rejection_for",
]

# A clock returns Unix time in integer milliseconds.
Clock = Callable[[], int]

# Client names use these characters only (realtime.models.CLIENT_NAME_PATTERN).
_HEALTH_IDENTITY = "_health"

# Redis keys embed the identity in a hash tag, which a brace would end early.
_IDENTITY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_.-")


@dataclass(frozen=True, slots=True)
class ReplayCheck:
    """One command's replay-relevant fields.

    ``identity`` is the namespace of nonces and sessions: the registered
    client's name. ``session`` and ``seq`` are both set or both None; without
    them only the timestamp and nonce are checked. ``create_session`` allows
    the check to start a session that the store does not hold yet; without
    it an unknown session is rejected as ``session.unknown``.
    """

    identity: str
    ts_ms: int
    nonce: str
    session: str | None = None
    seq: int | None = None
    create_session: bool = False

    def __post_init__(self) -> None:
        # These guard programming errors: the protocol parsers have already
        # rejected bad network input with a typed error.
        if not self.identity or not _IDENTITY_CHARACTERS.issuperset(self.identity):
            raise ValueError(f"identity must be a registered client name, got {self.identity!r}")
        if (self.session is None) != (self.seq is None):
            raise ValueError("session and seq must both be given or both be None")
        if self.seq is not None and not 1 <= self.seq <= MAX_SAFE_INTEGER:
            raise ValueError(f"seq out of range: {self.seq!r}")
        if not 0 <= self.ts_ms <= MAX_SAFE_INTEGER:
            raise ValueError(f"ts_ms out of range: {self.ts_ms!r}")


@dataclass(frozen=True, slots=True)
class ReplayVerdict:
    """An accepted check: the store's clock and the session's highest sequence number."""

    server_time_ms: int
    highest_seq: int | None = None


REJECTION_DETAILS = {
    "replay.timestamp_out_of_window": "timestamp is outside the accepted window around server time",
    "replay.nonce_reused": "nonce was already used by this client",
    "replay.sequence_reused": "sequence number was already used in this session",
    "replay.sequence_too_old": "sequence number is below the session's window",
    "session.unknown": "session is unknown or expired for this client",
    "session.limit_exceeded": "client has too many live sessions; resume an earlier session or retry later",
}


def rejection_for(
    code: str,
    *,
    server_time_ms: int,
    highest_seq: int | None,
    seq_window: int,
) -> ReplayRejected:
    """Build the typed rejection for a store's decision code."""
    if code not in REJECTION_DETAILS:
        raise ValueError(f"unknown replay decision {code!r}")
    extra: dict[str, int] = {"server_time": server_time_ms}
    status = 409
    if code == "replay.timestamp_out_of_window":
        status = 400
    elif code == "session.unknown":
        status = 400
    elif code == "session.limit_exceeded":
        status = 429
    elif code.startswith("replay.sequence_") and highest_seq is not None:
        extra["expected_seq"] = highest_seq + 1
        extra["window_floor"] = max(1, highest_seq - seq_window + 1)
    return ReplayRejected(REJECTION_DETAILS[code], code=code, status=status, **extra)


class ReplayStore(abc.ABC):
    """Storage and atomic decision for replay checks.

    Implementations must make ``check`` atomic with respect to every other
    check on the same identity, in every process that shares the store.
    """

    def __init__(self, *, max_skew_ms: int, seq_window: int, session_ttl_ms: int, max_sessions: int = 0) -> None:
        if max_skew_ms < 1 or seq_window < 1 or session_ttl_ms < 1:
            raise ValueError("max_skew_ms, seq_window and session_ttl_ms must be positive")
        if max_sessions < 0:
            raise ValueError("max_sessions must be 0 (no limit) or positive")
        self.max_skew_ms = max_skew_ms
        self.seq_window = seq_window
        self.session_ttl_ms = session_ttl_ms
        # Sessions one identity may start within session_ttl_ms; 0 is no limit.
        # Each session keeps its window in the store for session_ttl_ms, so
        # without a limit one client could fill the store for every client.
        self.max_sessions = max_sessions

    @abc.abstractmethod
    async def check(self, check: ReplayCheck) -> ReplayVerdict:
        """Decide one check and record it when accepted.

        Raises ReplayRejected with the decision's code, or
        ReplayStoreUnavailable when the store cannot decide. In the latter
        case the caller must not execute the command.
        """

    @abc.abstractmethod
    async def server_time_ms(self) -> int:
        """Return the store's clock, the one that checks compare timestamps with."""

    async def ping(self) -> None:
        """Raise ReplayStoreUnavailable unless the store can decide and record a check.

        A read alone would pass on a Redis that refuses writes (out of
        memory, read-only replica), where every command fails. The check runs
        under an identity no client can have, because client names start with
        a letter or digit, so it never touches a client's nonces.
        """
        now = await self.server_time_ms()
        await self.check(ReplayCheck(identity=_HEALTH_IDENTITY, ts_ms=now, nonce=secrets.token_urlsafe(16)))

    async def close(self) -> None:  # noqa: B027 - optional hook; the memory store has nothing to release
        """Release connections; the store is not used afterwards."""

    def _reject(self, code: str, server_time_ms: int, highest_seq: int | None) -> ReplayRejected:
        return rejection_for(
            code,
            server_time_ms=server_time_ms,
            highest_seq=highest_seq,
            seq_window=self.seq_window,
        )
