"""Redis replay store: one Lua script, one round trip per check.

All keys of one identity share the hash tag ``{identity}``, so a check
touches a single Redis Cluster slot and the script stays atomic there.
The store fails closed: any Redis error or a check slower than
``timeout_ms`` raises ReplayStoreUnavailable, and the caller executes
nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError, NoScriptError, RedisError

from ..exceptions import ReplayStoreUnavailable
from .base import Clock, ReplayCheck, ReplayStore, ReplayVerdict
from .pipeline import CheckPipeline

__all__ = ["CHECK_SCRIPT", "EVICTION_SAFE_POLICIES", "RedisReplayStore", "replay_key_prefix"]

logger = logging.getLogger(__name__)

CHECK_SCRIPT = resources.files(__package__).joinpath("check.lua").read_text()
_CHECK_SHA = hashlib.sha1(CHECK_SCRIPT.encode()).hexdigest()

# Any other maxmemory-policy may evict a recorded nonce, which lets its
# replay through: the volatile-* policies pick exactly the keys with a TTL.
EVICTION_SAFE_POLICIES = frozenset({"noeviction"})

_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


def replay_key_prefix(identity: str) -> str:
    """Return the key prefix of one identity; the braces make it a Cluster hash tag."""
    return f"rt:{{{identity}}}:"


class RedisReplayStore(ReplayStore):
    """Replay store on a Redis server or a Redis Cluster.

    The client is the store's own: a short socket timeout and no automatic
    retries, because redis-py's default retries would hold a command for
    seconds past ``timeout_ms``.

    With ``wait_replicas`` set, a check is accepted only after that many
    replicas acknowledged its writes (Redis WAIT, sent in the same round
    trip as the script). A check whose writes were not acknowledged in
    ``wait_timeout_ms`` raises ReplayStoreUnavailable, although its nonce
    stays recorded on the primary.
    """

    def __init__(
        self,
        url: str,
        *,
        max_skew_ms: int,
        seq_window: int,
        session_ttl_ms: int,
        max_sessions: int = 0,
        timeout_ms: int = 500,
        cluster: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 50,
        max_connections: int = 100,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            max_skew_ms=max_skew_ms, seq_window=seq_window, session_ttl_ms=session_ttl_ms, max_sessions=max_sessions
        )
        if wait_replicas < 0 or timeout_ms < 1 or wait_timeout_ms < 1 or max_connections < 1:
            raise ValueError(
                "wait_replicas must be 0 or more, and timeout_ms, wait_timeout_ms and max_connections must be positive"
            )
        if wait_replicas and wait_timeout_ms >= timeout_ms:
            raise ValueError(
                f"wait_timeout_ms ({wait_timeout_ms}) must be below timeout_ms ({timeout_ms}), "
                "or every unacknowledged check would time out instead of failing on its WAIT reply"
            )
        self.url = url
        self.cluster = cluster
        self.timeout_s = timeout_ms / 1000
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._clock = clock
        self._client: Any = self._make_client(url, cluster, self.timeout_s, max_connections)
        # Checks beyond max_connections wait here, within their timeout, where
        # redis-py's pool would raise MaxConnectionsError at once.
        self._connection_slots = asyncio.Semaphore(max_connections)
        # Checks without WAIT on a single server share writes on one
        # connection; see pipeline.py. None: every check uses the client.
        self._pipeline = None if cluster or wait_replicas else CheckPipeline.from_url(url, timeout_s=self.timeout_s)
        # Network round trips that checks waited for; a check normally waits
        # for one, which it may share with other checks in a pipeline write.
        self.round_trips = 0
        self._last_failure_log = 0.0
        self._suppressed_failures = 0
        self._last_script_missing_log = 0.0

    @staticmethod
    def _make_client(url: str, cluster: bool, timeout_s: float, max_connections: int) -> Any:
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
            # Per node in a cluster.
            "max_connections": max_connections,
        }
        if cluster:
            return RedisCluster.from_url(url, **options)
        return aioredis.Redis.from_url(url, health_check_interval=0, **options)

    @property
    def client(self) -> Any:
        """The underlying redis-py client, for health checks and tests."""
        return self._client

    async def check(self, check: ReplayCheck) -> ReplayVerdict:
        keys, args = self._keys_and_args(check)
        try:
            if self._pipeline is not None:
                # The pipeline bounds each check by timeout_s itself, with
                # one timer per write instead of one per check.
                reply = await self._run(keys, args)
            else:
                async with asyncio.timeout(self.timeout_s), self._connection_slots:
                    if self.wait_replicas:
                        reply = await self._run_with_wait(keys, args)
                    else:
                        reply = await self._run(keys, args)
        except _REDIS_FAILURES as exc:
            self._log_failure(check.identity, exc)
            raise ReplayStoreUnavailable("replay store is unavailable; nothing was executed") from exc

        decision = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        server_time = int(reply[1])
        highest_seq = int(reply[2]) if int(reply[2]) >= 0 else None
        if decision != "ok":
            raise self._reject(decision, server_time, highest_seq)
        return ReplayVerdict(server_time_ms=server_time, highest_seq=highest_seq)

    async def server_time_ms(self) -> int:
        if self._clock is not None:
            return self._clock()
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.cluster:
                    seconds, micros = await self._client.time(target_nodes=RedisCluster.RANDOM)
                else:
                    seconds, micros = await self._client.time()
        except _REDIS_FAILURES as exc:
            raise ReplayStoreUnavailable("replay store is unavailable") from exc
        return int(seconds) * 1000 + int(micros) // 1000

    async def load_script(self) -> None:
        """Load the check script on the server, or on every primary of a cluster.

        A check that gets a NOSCRIPT reply sends the script itself with EVAL,
        so calling this at start-up only saves the first check that extra
        round trip.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._load_script()
        except _REDIS_FAILURES as exc:
            raise ReplayStoreUnavailable("replay store is unavailable") from exc

    @property
    def pipeline(self) -> CheckPipeline | None:
        """The connection that pipelines checks, or None when each check uses the client."""
        return self._pipeline

    async def close(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.close()
        try:
            await self._client.aclose()
        except _REDIS_FAILURES:  # pragma: no cover - closing a dead connection
            pass

    def _keys_and_args(self, check: ReplayCheck) -> tuple[list[str], list[str | int]]:
        prefix = replay_key_prefix(check.identity)
        keys = [f"{prefix}n:{check.nonce}"]
        seq: str | int = ""
        if check.session is not None and check.seq is not None:
            keys += [f"{prefix}s:{check.session}", f"{prefix}b:{check.session}", f"{prefix}sessions"]
            seq = check.seq
        args: list[str | int] = [
            check.ts_ms,
            self.max_skew_ms,
            seq,
            self.seq_window,
            self.session_ttl_ms,
            "1" if check.create_session else "0",
            "" if self._clock is None else self._clock(),
            self.max_sessions,
        ]
        return keys, args

    async def _load_script(self) -> None:
        self.round_trips += 1
        # In a cluster, redis-py sends SCRIPT LOAD to every primary and
        # raises if any of them fails.
        sha = await self._client.script_load(CHECK_SCRIPT)
        if isinstance(sha, bytes):
            sha = sha.decode()
        if sha != _CHECK_SHA:  # pragma: no cover - Redis computes the same SHA1
            raise RedisError(f"Redis returned SHA1 {sha!r} for the check script, expected {_CHECK_SHA!r}")

    async def _run(self, keys: list[str], args: list[str | int]) -> Any:
        self.round_trips += 1
        try:
            return await self._evalsha(keys, args)
        except NoScriptError:
            # The server lost its script cache (restart, SCRIPT FLUSH,
            # failover). NOSCRIPT means nothing ran, so running the script
            # again cannot apply the check twice. EVAL sends the script body,
            # and caches it, in the same command that runs it, so a flush in
            # between cannot fail it again.
            self._log_script_missing()
            self.round_trips += 1
            if self._pipeline is not None:
                # This EVAL leaves the pipeline for the pooled client, so it
                # takes a connection slot like any unpipelined check.
                async with asyncio.timeout(self.timeout_s), self._connection_slots:
                    return await self._client.eval(CHECK_SCRIPT, len(keys), *keys, *args)
            return await self._client.eval(CHECK_SCRIPT, len(keys), *keys, *args)

    async def _evalsha(self, keys: list[str], args: list[str | int]) -> Any:
        if self._pipeline is not None:
            return await self._pipeline.evalsha(_CHECK_SHA, keys, args)
        return await self._client.evalsha(_CHECK_SHA, len(keys), *keys, *args)

    async def _run_with_wait(self, keys: list[str], args: list[str | int]) -> Any:
        """Run the check and WAIT for replicas in one pipeline, one round trip.

        WAIT counts the replicas that acknowledged the writes of the
        connection it is sent on, so it must travel on the script's own
        connection: a pipeline writes all its commands to one connection, and
        in a cluster both commands go to the node that owns the keys' slot.
        """
        script: tuple[str, str] = ("EVALSHA", _CHECK_SHA)
        for attempt in range(2):
            self.round_trips += 1
            pipe, wait_options = await self._wait_pipeline(keys[0])
            pipe.execute_command(*script, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms, **wait_options)
            if self.cluster:
                # A redirected script would run on another node than its WAIT.
                reply, acknowledged = await pipe.execute(raise_on_error=False, allow_redirections=False)
            else:
                reply, acknowledged = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and attempt == 0:
                self._log_script_missing()
                script = ("EVAL", CHECK_SCRIPT)
                continue
            if isinstance(reply, MovedError) and attempt == 0:
                # MOVED means nothing ran, so the check goes again to the slot's new owner.
                await self._client.nodes_manager.move_slot(reply)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acknowledged, Exception):
                raise acknowledged
            if reply[0] in (b"ok", "ok") and int(acknowledged) < self.wait_replicas:
                # The nonce is recorded on the primary only; a failover now
                # could forget it, so the command is not executed.
                raise RedisError(f"only {acknowledged} of {self.wait_replicas} replicas acknowledged the check")
            return reply
        raise RedisError("replay check failed twice with NOSCRIPT or MOVED")  # pragma: no cover

    async def _wait_pipeline(self, key: str) -> tuple[Any, dict[str, Any]]:
        if not self.cluster:
            return self._client.pipeline(transaction=False), {}
        # WAIT names no key, so redis-py would send it to the default node
        # unless it targets the node that owns the key's slot.
        await self._client.initialize()
        node = self._client.get_node_from_key(key)
        return self._client.pipeline(), {"target_nodes": node}

    def _log_script_missing(self) -> None:
        # After a SCRIPT FLUSH every check in flight meets NOSCRIPT once; one
        # line per ten seconds is enough to see it happened.
        now = time.monotonic()
        if now - self._last_script_missing_log >= 10:
            self._last_script_missing_log = now
            logger.warning("replay check script missing on Redis; sending it with EVAL")

    def _log_failure(self, identity: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_failure_log < 10:
            self._suppressed_failures += 1
            return
        detail = str(exc) or (f"no reply within {self.timeout_s * 1000:.0f} ms" if isinstance(exc, TimeoutError) else "no detail")
        logger.error(
            "replay store unavailable (client=%s error=%s: %s, %d similar errors suppressed)",
            identity,
            type(exc).__name__,
            detail,
            self._suppressed_failures,
        )
        self._last_failure_log = now
        self._suppressed_failures = 0
