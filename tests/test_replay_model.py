"""Model-based tests: random interleavings against every backend, each decision compared with the model.

A Hypothesis state machine opens connections, sends, duplicates and
reorders frames, resumes sessions (its own, another client's, unknown
ones), sends session-less HTTP-style checks and moves the injected clock
past nonce and session expiries. Every decision of the real store, run on
memory, a real redis-server and the real 3-node Redis Cluster, must equal
the reference model's in tests/support/replay_model.py.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from realtime.exceptions import InvalidMessage, ReplayRejected
from realtime.replay import ConnectionSession, MemoryReplayStore, ReplayCheck, ReplayStore, ReplayVerdict
from realtime.replay.redis import RedisReplayStore
from tests.support.replay_model import ModelConnection, ModelDecision, ReplayModel

SKEW = 1_000
WINDOW = 8
SESSION_TTL = 5_000
START = 1_800_000_000_000

# Offsets of a frame's timestamp from the clock: both edges of the window and just past them.
TS_OFFSETS = [-SKEW - 1, -SKEW, -SKEW // 2, 0, SKEW // 2, SKEW, SKEW + 1]
# Sequence gaps from a connection's next number: short jumps ahead, reorders
# within the window, old numbers below it, and jumps past the window.
SEQ_GAPS = st.one_of(
    st.integers(1, WINDOW - 1),
    st.integers(-WINDOW - 2, 0),
    st.sampled_from([WINDOW, WINDOW * 3, 1_000]),
)
CLOCK_STEPS = st.one_of(
    st.integers(0, SKEW),
    st.sampled_from([SKEW + 1, 2 * SKEW + 1, SESSION_TTL - 1, SESSION_TTL, SESSION_TTL + 1]),
)

_nonce_counter = itertools.count()


def fresh_nonce() -> str:
    return f"nonce-{next(_nonce_counter):016d}"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


@dataclass
class Connection:
    """A real connection session and its model, side by side."""

    real: ConnectionSession
    model: ModelConnection
    next_seq: int = 1


@dataclass(frozen=True)
class SentFrame:
    """A frame as sent, with ``origin`` the connection that first sent it."""

    origin: Connection
    seq: int
    ts: int
    nonce: str


def decision_of(outcome: ReplayVerdict | BaseException) -> ModelDecision:
    if isinstance(outcome, ReplayVerdict):
        return ModelDecision("ok", outcome.highest_seq)
    if isinstance(outcome, ReplayRejected):
        expected_seq = outcome.extra.get("expected_seq")
        return ModelDecision(outcome.code, None if expected_seq is None else expected_seq - 1)
    if isinstance(outcome, InvalidMessage):
        return ModelDecision(outcome.code)
    raise outcome


class ReplayMachine(RuleBasedStateMachine):
    """Drives one store and the model with the same steps; see the module docstring."""

    connections = Bundle("connections")
    frames = Bundle("frames")

    def __init__(self, make_store: Any) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.store: ReplayStore = make_store(self.clock)
        self.model = ReplayModel(max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=SESSION_TTL)
        # Fresh names per example, so that examples sharing a Redis never meet.
        prefix = secrets.token_hex(4)
        self.identities = [f"{prefix}-alice", f"{prefix}-bob", f"{prefix}-carol"]

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()

    def run(self, coroutine: Any) -> ReplayVerdict | BaseException:
        try:
            return self.loop.run_until_complete(coroutine)
        except (ReplayRejected, InvalidMessage) as exc:
            return exc

    def compare(self, outcome: ReplayVerdict | BaseException, expected: ModelDecision) -> None:
        actual = decision_of(outcome)
        assert actual == expected, f"store decided {actual}, model decided {expected}"
        if isinstance(outcome, ReplayVerdict):
            assert outcome.server_time_ms == self.clock.now
        if isinstance(outcome, ReplayRejected):
            assert outcome.extra["server_time"] == self.clock.now

    def send(self, connection: Connection, frame: SentFrame) -> None:
        real = self.run(connection.real.check_command(seq=frame.seq, ts_ms=frame.ts, nonce=frame.nonce))
        expected = connection.model.check_command(seq=frame.seq, ts_ms=frame.ts, nonce=frame.nonce, now=self.clock.now)
        self.compare(real, expected)
        connection.next_seq = max(connection.next_seq, frame.seq + 1)

    # --- rules --------------------------------------------------------------

    @initialize(target=connections)
    def first_connection(self) -> Connection:
        return self.open(self.identities[0])

    @rule(target=connections, identity_index=st.integers(0, 2))
    def open_connection(self, identity_index: int) -> Connection:
        return self.open(self.identities[identity_index])

    def open(self, identity: str) -> Connection:
        real = ConnectionSession(self.store, identity)
        return Connection(real, ModelConnection(self.model, identity, real.token))

    @rule(target=frames, connection=connections, gap=SEQ_GAPS, offset=st.sampled_from(TS_OFFSETS))
    def send_command(self, connection: Connection, gap: int, offset: int) -> SentFrame:
        frame = SentFrame(connection, max(1, connection.next_seq + gap), self.clock.now + offset, fresh_nonce())
        self.send(connection, frame)
        return frame

    @rule(
        frame=frames,
        connection=connections,
        kind=st.sampled_from(["same frame", "same seq, fresh nonce", "same nonce, new timestamp"]),
        offset=st.sampled_from(TS_OFFSETS),
    )
    def replay(self, frame: SentFrame, connection: Connection, kind: str, offset: int) -> None:
        """Send a captured frame again, whole or in part, on any connection."""
        if kind == "same frame":
            replayed = frame
        elif kind == "same seq, fresh nonce":
            replayed = SentFrame(frame.origin, frame.seq, self.clock.now, fresh_nonce())
        else:
            replayed = SentFrame(frame.origin, connection.next_seq, self.clock.now + offset, frame.nonce)
        self.send(connection, replayed)

    @rule(
        connection=connections,
        source=connections,
        token_kind=st.sampled_from(["source", "source", "unknown"]),
        gap=SEQ_GAPS,
    )
    def resume(self, connection: Connection, source: Connection, token_kind: str, gap: int) -> None:
        # The source may belong to another identity: its token is then unknown to this one.
        token = source.real.token if token_kind == "source" else secrets.token_urlsafe(16)
        seq = max(1, source.next_seq + gap)
        nonce = fresh_nonce()
        real = self.run(connection.real.resume(token=token, seq=seq, ts_ms=self.clock.now, nonce=nonce))
        expected = connection.model.resume(token=token, seq=seq, ts_ms=self.clock.now, nonce=nonce, now=self.clock.now)
        self.compare(real, expected)
        if expected.code == "ok":
            connection.next_seq = max(source.next_seq, seq + 1)

    @rule(
        identity_index=st.integers(0, 2),
        frame=st.one_of(st.none(), frames),
        session=st.one_of(st.none(), connections),
        gap=SEQ_GAPS,
    )
    def http_check(self, identity_index: int, frame: SentFrame | None, session: Connection | None, gap: int) -> None:
        """A check as the HTTP API sends it: never creates a session, may reuse a captured nonce."""
        nonce = fresh_nonce() if frame is None else frame.nonce
        token = None if session is None else session.real.token
        seq = None if session is None else max(1, session.next_seq + gap)
        check = ReplayCheck(identity=self.identities[identity_index], ts_ms=self.clock.now, nonce=nonce, session=token, seq=seq)
        self.compare(self.run(self.store.check(check)), self.model.decide(check, self.clock.now))
        if session is not None and seq is not None:
            session.next_seq = max(session.next_seq, seq + 1)

    @rule(connection=connections, delta=st.sampled_from([-1, 0, 1]), offset=st.sampled_from([0, 0, -SKEW, SKEW]))
    def send_at_window_floor(self, connection: Connection, delta: int, offset: int) -> None:
        """Send the number at the window's lower edge, just below it or just above it."""
        highest = self.model.highest_seq(connection.model.identity, connection.model.token)
        frame = SentFrame(connection, max(1, highest - WINDOW + delta), self.clock.now + offset, fresh_nonce())
        self.send(connection, frame)

    @rule(connection=connections, count=st.integers(WINDOW - 2, WINDOW + 2))
    def send_run(self, connection: Connection, count: int) -> None:
        """Send consecutive numbers from the next one on, filling the window."""
        for _ in range(count):
            self.send(connection, SentFrame(connection, connection.next_seq, self.clock.now, fresh_nonce()))

    @rule(connection=connections, data=st.data())
    def send_late_frames(self, connection: Connection, data: st.DataObject) -> None:
        """Send, in random order, every number inside the window that the session has not seen."""
        unseen = self.model.unseen_in_window(connection.model.identity, connection.model.token)
        for seq in data.draw(st.permutations(unseen), label="late numbers"):
            self.send(connection, SentFrame(connection, seq, self.clock.now, fresh_nonce()))

    @rule(frame=frames, delta=st.sampled_from([-1, 0, 1]), offset=st.sampled_from(TS_OFFSETS))
    def reuse_nonce_around_expiry(self, frame: SentFrame, delta: int, offset: int) -> None:
        """Move the clock to one ms around the last moment a nonce is remembered, then use it again."""
        # frame.ts + SKEW is that last moment.
        self.clock.now = max(self.clock.now, frame.ts + SKEW + delta)
        origin = frame.origin
        self.send(origin, SentFrame(origin, origin.next_seq, self.clock.now + offset, frame.nonce))

    @rule(
        kind=st.sampled_from(["step", "session expiry"]),
        step=CLOCK_STEPS,
        connection=connections,
        delta=st.sampled_from([-1, 0, 1]),
    )
    def advance_clock(self, kind: str, step: int, connection: Connection, delta: int) -> None:
        """Move the clock by a step, or to one ms around the moment a session expires."""
        if kind == "step":
            self.clock.now += step
            return
        last_accepted_at = self.model.last_accepted_at(connection.model.identity, connection.model.token)
        if last_accepted_at is not None:
            self.clock.now = max(self.clock.now, last_accepted_at + SESSION_TTL + delta)


def run_machine(make_store: Any, examples: int) -> None:
    run_state_machine_as_test(
        lambda: ReplayMachine(make_store),
        settings=settings(
            max_examples=examples,
            stateful_step_count=50,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def store_options(clock: Clock) -> dict[str, Any]:
    return {"max_skew_ms": SKEW, "seq_window": WINDOW, "session_ttl_ms": SESSION_TTL, "clock": clock}


def test_model_memory_store() -> None:
    run_machine(lambda clock: MemoryReplayStore(**store_options(clock)), examples=150)


def test_model_redis_store(redis_url: str) -> None:
    run_machine(lambda clock: RedisReplayStore(redis_url, timeout_ms=5_000, **store_options(clock)), examples=80)


@pytest.mark.cluster
def test_model_cluster_store(redis_cluster_url: str) -> None:
    run_machine(
        lambda clock: RedisReplayStore(redis_cluster_url, timeout_ms=5_000, cluster=True, **store_options(clock)),
        examples=60,
    )


def test_model_catches_broken_store() -> None:
    """The comparison can fail: a store that loses sequence numbers is caught."""

    class ForgetfulStore(MemoryReplayStore):
        async def check(self, check: ReplayCheck) -> ReplayVerdict:
            if check.session is not None:
                check = ReplayCheck(
                    identity=check.identity,
                    ts_ms=check.ts_ms,
                    nonce=check.nonce,
                    session=f"{check.session}-{check.nonce}",
                    seq=check.seq,
                    create_session=True,
                )
            return await super().check(check)

    with pytest.raises(AssertionError, match="store decided"):
        run_machine(lambda clock: ForgetfulStore(**store_options(clock)), examples=150)
