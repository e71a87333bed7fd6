"""A reference model of the replay engine: plain Python, no Redis, written to be obviously correct.

It keeps every accepted (identity, nonce) with its timestamp and every
sequence number seen per session, as sets, where the stores keep expiring
keys and a bitmap. The model-based tests compare each store decision with
the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from realtime.exceptions import InvalidMessage
from realtime.replay import ReplayCheck

__all__ = ["ModelConnection", "ModelDecision", "ReplayModel"]


@dataclass(frozen=True)
class ModelDecision:
    """A decision: "ok" or a rejection code, and the highest sequence number as the store reports it."""

    code: str
    highest_seq: int | None = None


@dataclass
class _ModelSession:
    seen: set[int] = field(default_factory=set)
    last_accepted_at: int = 0

    @property
    def highest(self) -> int:
        return max(self.seen, default=0)


class ReplayModel:
    """The rules of realtime.replay.base, one check at a time."""

    def __init__(self, *, max_skew_ms: int, seq_window: int, session_ttl_ms: int) -> None:
        self.max_skew_ms = max_skew_ms
        self.seq_window = seq_window
        self.session_ttl_ms = session_ttl_ms
        # (identity, nonce) -> timestamp of the accepted command that used it.
        self.nonces: dict[tuple[str, str], int] = {}
        self.sessions: dict[tuple[str, str], _ModelSession] = {}

    def decide(self, check: ReplayCheck, now: int) -> ModelDecision:
        """Return the decision for ``check`` at time ``now``, recording it when accepted."""
        if check.ts_ms < now - self.max_skew_ms or check.ts_ms > now + self.max_skew_ms:
            return ModelDecision("replay.timestamp_out_of_window")

        # A nonce is remembered for as long as its timestamp could still pass.
        used_at = self.nonces.get((check.identity, check.nonce))
        if used_at is not None and now <= used_at + self.max_skew_ms:
            return ModelDecision("replay.nonce_reused")

        session = None
        if check.session is not None and check.seq is not None:
            session = self.sessions.get((check.identity, check.session))
            if session is not None and now >= session.last_accepted_at + self.session_ttl_ms:
                session = None
            if session is None:
                if not check.create_session:
                    return ModelDecision("session.unknown")
                session = _ModelSession()
            highest = session.highest
            if check.seq <= highest - self.seq_window:
                return ModelDecision("replay.sequence_too_old", highest)
            if check.seq in session.seen:
                return ModelDecision("replay.sequence_reused", highest)

        self.nonces[(check.identity, check.nonce)] = check.ts_ms
        if session is None or check.session is None or check.seq is None:
            return ModelDecision("ok")
        session.seen.add(check.seq)
        session.last_accepted_at = now
        self.sessions[(check.identity, check.session)] = session
        return ModelDecision("ok", session.highest)


    def highest_seq(self, identity: str, session: str) -> int:
        """Return the session's highest sequence number, 0 for a session never accepted."""
        stored = self.sessions.get((identity, session))
        return 0 if stored is None else stored.highest

    def unseen_in_window(self, identity: str, session: str) -> list[int]:
        """Return the numbers inside the session's window that it has not seen, lowest first."""
        stored = self.sessions.get((identity, session))
        if stored is None:
            return []
        floor = max(1, stored.highest - self.seq_window + 1)
        return [seq for seq in range(floor, stored.highest) if seq not in stored.seen]

    def last_accepted_at(self, identity: str, session: str) -> int | None:
        stored = self.sessions.get((identity, session))
        return None if stored is None else stored.last_accepted_at


class ModelConnection:
    """The model of realtime.replay.ConnectionSession: one connection's session token."""

    def __init__(self, model: ReplayModel, identity: str, token: str) -> None:
        self.model = model
        self.identity = identity
        self.token = token
        self.started = False

    def check_command(self, *, seq: int, ts_ms: int, nonce: str, now: int) -> ModelDecision:
        check = ReplayCheck(
            identity=self.identity,
            ts_ms=ts_ms,
            nonce=nonce,
            session=self.token,
            seq=seq,
            create_session=not self.started,
        )
        decision = self.model.decide(check, now)
        if decision.code == "ok":
            self.started = True
        return decision

    def resume(self, *, token: str, seq: int, ts_ms: int, nonce: str, now: int) -> ModelDecision:
        if self.started:
            return ModelDecision(InvalidMessage.code)
        check = ReplayCheck(identity=self.identity, ts_ms=ts_ms, nonce=nonce, session=token, seq=seq)
        decision = self.model.decide(check, now)
        if decision.code == "ok":
            self.token = token
            self.started = True
        return decision
