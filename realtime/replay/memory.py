"""In-process replay store: the embedded default for a single daphne process.

It gives the same decisions as the Redis store, but its state lives in one
process and is lost on restart, so it protects nothing across workers or
restarts. Use the Redis store whenever more than one process serves clients.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass

from .base import Clock, ReplayCheck, ReplayStore, ReplayVerdict

__all__ = ["MemoryReplayStore"]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Session:
    highest_seq: int
    # Bit (s mod window) is set when sequence number s, within the window
    # below highest_seq, has been seen: the same ring layout the Redis
    # store keeps with SETBIT.
    bitmap: int
    expires_at_ms: int


class MemoryReplayStore(ReplayStore):
    """Replay store kept in a dict, pruned as nonces expire."""

    def __init__(
        self,
        *,
        max_skew_ms: int,
        seq_window: int,
        session_ttl_ms: int,
        max_sessions: int = 0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            max_skew_ms=max_skew_ms, seq_window=seq_window, session_ttl_ms=session_ttl_ms, max_sessions=max_sessions
        )
        self._clock = clock or _wall_clock_ms
        # (identity, nonce) -> expiry in ms; the nonce is recorded while now < expiry.
        self._nonces: dict[tuple[str, str], int] = {}
        self._expiry_heap: list[tuple[int, tuple[str, str]]] = []
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._next_session_sweep_ms = 0
        # identity -> {session token: ms until which its start counts against max_sessions}
        self._session_starts: dict[str, dict[str, int]] = {}
        # check() has no await points, so it is atomic on one event loop; the
        # lock keeps it atomic for callers in other threads as well.
        self._lock = threading.Lock()

    async def server_time_ms(self) -> int:
        return self._clock()

    async def check(self, check: ReplayCheck) -> ReplayVerdict:
        with self._lock:
            return self._check_locked(check)

    def _check_locked(self, check: ReplayCheck) -> ReplayVerdict:
        now = self._clock()
        self._prune(now)

        if not now - self.max_skew_ms <= check.ts_ms <= now + self.max_skew_ms:
            raise self._reject("replay.timestamp_out_of_window", now, None)

        nonce_key = (check.identity, check.nonce)
        expiry = self._nonces.get(nonce_key)
        if expiry is not None and now < expiry:
            raise self._reject("replay.nonce_reused", now, None)

        session: _Session | None = None
        fresh_session = False
        if check.session is not None and check.seq is not None:
            session = self._sessions.get((check.identity, check.session))
            if session is not None and session.expires_at_ms <= now:
                session = None
            if session is None:
                if not check.create_session:
                    raise self._reject("session.unknown", now, None)
                self._check_session_limit(check.identity, now)
                session = _Session(highest_seq=0, bitmap=0, expires_at_ms=0)
                fresh_session = True
            self._check_sequence(session, check.seq, now)

        # Every check passed: record the nonce and the sequence number.
        expires_at = check.ts_ms + self.max_skew_ms + 1
        self._nonces[nonce_key] = expires_at
        heapq.heappush(self._expiry_heap, (expires_at, nonce_key))

        if session is None or check.session is None or check.seq is None:
            return ReplayVerdict(server_time_ms=now)
        self._record_sequence(session, check.seq)
        session.expires_at_ms = now + self.session_ttl_ms
        if fresh_session and self.max_sessions:
            self._session_starts.setdefault(check.identity, {})[check.session] = now + self.session_ttl_ms
        self._sessions[(check.identity, check.session)] = session
        return ReplayVerdict(server_time_ms=now, highest_seq=session.highest_seq)

    def _check_session_limit(self, identity: str, now: int) -> None:
        if not self.max_sessions:
            return
        starts = self._session_starts.get(identity, {})
        for token in [token for token, until in starts.items() if until <= now]:
            del starts[token]
        if len(starts) >= self.max_sessions:
            raise self._reject("session.limit_exceeded", now, None)

    def _check_sequence(self, session: _Session, seq: int, now: int) -> None:
        if seq > session.highest_seq:
            return
        if seq <= session.highest_seq - self.seq_window:
            raise self._reject("replay.sequence_too_old", now, session.highest_seq)
        if session.bitmap >> (seq % self.seq_window) & 1:
            raise self._reject("replay.sequence_reused", now, session.highest_seq)

    def _record_sequence(self, session: _Session, seq: int) -> None:
        window = self.seq_window
        if seq > session.highest_seq:
            if seq - session.highest_seq >= window:
                session.bitmap = 0
            else:
                # Positions between the old and the new highest number now
                # stand for numbers that have not been seen yet.
                for skipped in range(session.highest_seq + 1, seq):
                    session.bitmap &= ~(1 << (skipped % window))
            session.highest_seq = seq
        session.bitmap |= 1 << (seq % window)

    def _prune(self, now: int) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            if self._nonces.get(key) == expires_at:
                del self._nonces[key]
        if now >= self._next_session_sweep_ms:
            self._next_session_sweep_ms = now + 60_000
            for key in [key for key, session in self._sessions.items() if session.expires_at_ms <= now]:
                del self._sessions[key]
