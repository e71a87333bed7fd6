"""Automatic pipelining of replay checks on one Redis connection.

A check on an idle connection is written at once. Checks that arrive while a
write waits for its replies are queued, and go out together in one socket
write as soon as those replies have arrived. Replies are read back from the
stream in order. Each check is still one EVALSHA of the check script: one
atomic decision and one round trip, although a queued check may first wait
for the write ahead of it. Under load a write carries every check that
arrived during the previous round trip, so concurrent checks share the cost
of the system calls and of Redis's event loop instead of paying it each.
Replies wake at most eight callers per turn of the event loop, so that Redis
already runs the next checks of the first callers while this process wakes
the others.

The pipeline fails closed. A connection error fails every check in flight and
every check queued. A write whose replies have not all arrived within
``timeout_s`` aborts the connection and fails every check in flight the same
way, because after a lost reply the stream can no longer be matched to its
requests. The next check opens a new connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["CheckPipeline"]

# Replies resolved per loop turn. A larger batch of replies is resolved over
# several turns, so that Redis runs the next commands of the first callers
# while this process wakes the others, instead of each waiting for the other.
_WAKEUPS_PER_TURN = 8

# URL options the pipeline understands; any other option (TLS, timeouts in
# the query string) makes the store use redis-py's client for every check.
_SUPPORTED_URL_OPTIONS = frozenset({"host", "port", "path", "db", "username", "password", "connection_class"})


class CheckPipeline:
    """A lazily opened Redis connection that sends concurrent commands in shared writes."""

    def __init__(
        self,
        *,
        timeout_s: float,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.host = host
        self.port = port
        self.path = path
        self.db = db
        self.username = username
        self.password = password
        self._connection: _RespConnection | None = None
        self._connect_lock = asyncio.Lock()
        # Socket writes made by connections of this pipeline, handshakes included.
        self._writes_of_closed_connections = 0

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float) -> CheckPipeline | None:
        """Build a pipeline for a ``redis://`` or ``unix://`` URL, or None when the URL needs redis-py's client."""
        options = parse_url(url)
        if not options.keys() <= _SUPPORTED_URL_OPTIONS:
            return None
        connection_class = options.pop("connection_class", None)
        if connection_class is not None and connection_class is not UnixDomainSocketConnection:
            return None
        return cls(timeout_s=timeout_s, **options)

    @property
    def writes(self) -> int:
        """Socket writes made so far; checks divided by writes is the average number of checks per write."""
        current = self._connection.writes if self._connection is not None else 0
        return self._writes_of_closed_connections + current

    async def evalsha(self, sha: str, keys: list[str], args: list[str | int]) -> Any:
        """Run one EVALSHA and return its reply; raise a RedisError subclass on failure."""
        packed = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
        connection = self._connection
        if connection is not None and not connection.closed:
            # The deadline of the write that carries the check bounds the
            # wait for its reply.
            return await connection.send(packed)

        # Opening the connection and the first write share one deadline.
        try:
            async with asyncio.timeout(self.timeout_s):
                connection = await self._connect()
                return await connection.send(packed)
        except asyncio.TimeoutError as exc:
            raise RedisTimeoutError(f"replay check timed out after {self.timeout_s * 1000:.0f} ms waiting for Redis") from exc

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    async def _connect(self) -> _RespConnection:
        async with self._connect_lock:
            # Another check may have connected while this one waited for the lock.
            if self._connection is not None and not self._connection.closed:
                return self._connection
            if self._connection is not None:
                self._writes_of_closed_connections += self._connection.writes
                self._connection = None

            loop = asyncio.get_running_loop()
            timeout_s = self.timeout_s
            try:
                if self.path is not None:
                    _, connection = await loop.create_unix_connection(lambda: _RespConnection(timeout_s), self.path)
                else:
                    _, connection = await loop.create_connection(lambda: _RespConnection(timeout_s), self.host, self.port)
                await self._handshake(connection)
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis for replay checks: {exc}") from exc
            self._connection = connection
            return connection

    async def _handshake(self, connection: _RespConnection) -> None:
        commands: list[tuple[Any, ...]] = []
        if self.password is not None:
            if self.username is not None:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        try:
            for command in commands:
                await connection.send(hiredis.pack_command(command))
        except ResponseError as exc:
            connection.close()
            raise RedisConnectionError(f"Redis rejected {command[0]} on the replay-check connection: {exc}") from exc


class _RespConnection(asyncio.Protocol):
    """One RESP2 stream: requests are queued, sent in shared writes, and matched to replies in order."""

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self._queued: list[bytes] = []
        self._queued_futures: list[asyncio.Future[Any]] = []
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        # One [deadline, unanswered requests] pair per write, oldest first.
        self._write_deadlines: deque[list[Any]] = deque()
        # Loop time at which the oldest command still queued was queued.
        self._queued_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # True from a read that woke several callers or left commands queued,
        # until _release_hold has written the queue.
        self._holding = False
        self.closed = False
        self.writes = 0

    # --- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self._fail(RedisConnectionError(f"connection to Redis lost{detail}"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self._resolve_replies()

    def _resolve_replies(self) -> None:
        if self.closed:
            return
        woken = 0
        while woken < _WAKEUPS_PER_TURN:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                self._abort(RedisConnectionError(f"Redis sent a reply that does not parse: {exc}"))
                return
            if reply is False:
                break
            if not self._in_flight:
                self._abort(RedisConnectionError("Redis sent a reply to no request"))
                return
            future = self._in_flight.popleft()
            self._count_reply()
            # A caller that timed out or was cancelled has stopped waiting.
            if future.done():
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_typed_error(reply))
            else:
                future.set_result(reply)
            woken += 1

        # Commands queued behind the write in flight go out now. When several
        # callers were woken, they run in the next loop turn before
        # _release_hold, so the commands they send next share that write. A
        # single woken caller finds the connection idle and writes at once.
        if (woken > 1 or self._queued) and not self._holding:
            self._holding = True
            self._loop.call_soon(self._release_hold)
        if woken == _WAKEUPS_PER_TURN:
            # The rest of the replies wait for the next turn, after the
            # commands of the callers woken now have gone out, so that Redis
            # works on those while this process resolves the rest.
            self._loop.call_soon(self._resolve_replies)

    # --- requests --------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command for the next write and return the future of its reply."""
        if self.closed:
            raise RedisConnectionError("connection to Redis is closed")
        future = self._loop.create_future()
        self._queued.append(packed)
        self._queued_futures.append(future)
        if len(self._queued) > 1:
            return future
        if not self._holding and not self._in_flight:
            # An idle connection writes at once: waiting could only add latency.
            self._flush()
            return future

        self._queued_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._queued_since + self._timeout_s, self._check_deadline)
        # Otherwise _release_hold writes the queue when the replies to the
        # write in flight arrive, so that under load one write carries every
        # command sent during the previous round trip.
        return future

    def _release_hold(self) -> None:
        self._holding = False
        self._flush()

    def close(self) -> None:
        self._abort(RedisConnectionError("replay-check connection closed"))

    def _flush(self) -> None:
        if self.closed or self._transport is None or not self._queued:
            return
        data = b"".join(self._queued)
        futures = self._queued_futures
        self._queued = []
        self._queued_futures = []

        self._transport.write(data)
        self.writes += 1
        self._in_flight.extend(futures)
        self._write_deadlines.append([self._loop.time() + self._timeout_s, len(futures)])
        if self._timer is None:
            self._timer = self._loop.call_at(self._write_deadlines[0][0], self._check_deadline)

    def _count_reply(self) -> None:
        oldest = self._write_deadlines[0]
        oldest[1] -= 1
        if oldest[1] == 0:
            self._write_deadlines.popleft()

    def _check_deadline(self) -> None:
        # One timer watches the oldest write and the oldest queued command,
        # and re-arms itself, instead of one timer set and cancelled per write.
        self._timer = None
        deadlines = []
        if self._write_deadlines:
            deadlines.append(self._write_deadlines[0][0])
        if self._queued:
            deadlines.append(self._queued_since + self._timeout_s)
        if not deadlines:
            return
        deadline = min(deadlines)
        if self._loop.time() >= deadline:
            self._abort(RedisTimeoutError(f"replay checks timed out after {self._timeout_s * 1000:.0f} ms waiting for Redis"))
            return
        self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _abort(self, error: Exception) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting = [*self._in_flight, *self._queued_futures]
        self._in_flight.clear()
        self._write_deadlines.clear()
        self._queued = []
        self._queued_futures = []
        for future in waiting:
            if not future.done():
                future.set_exception(error)


def _typed_error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return reply
