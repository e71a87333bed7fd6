"""Redis replay store: one Lua script, one round trip per check.

All keys of one identity share the hash tag ``{identity}``, so a check
touches a single Redis Cluster slot and the script stays atomic there.
The store fails closed: any Redis error or a check slower than
``timeout_ms`` raises ReplayStoreUnavailable, and the caller executes
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.asyncio.retry import Retry

from ..exceptions import ReplayStoreUnavailable
from .base import Clock, ReplayCheck, ReplayStore, ReplayVerdict
from .pipeline import CheckPipeline

__all__ = ["EVICTION_SAFE_POLICIES", "RedisReplayStore", "replay_key_prefix"]

logger = logging.getLogger(__name__)

CHECK_SCRIPT = resources.files(__package__).joinpath("check.lua").read_text()

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
    seconds and a retried check is a second attempt at an atomic decision.
    """

    def __init__(
        self,
        url: str,
        *,
        max_skew_ms: int,
        seq_window: int,
        session_ttl_ms: int,
        timeout_ms: int = 500,
        cluster: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 50,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(max_skew_ms=max_skew_ms, seq_window=seq_window, session_ttl_ms=session_ttl_ms)
        self.url = url
        self.cluster = cluster
        self.timeout_s = timeout_ms / 1000
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._clock = clock
        self._client: Any = self._make_client(url, cluster, self.timeout_s)
        self._script = self._client.register_script(CHECK_SCRIPT)
        # Checks without WAIT on a single server share writes on one
        # connection; see pipeline.py. None: every check uses the client.
        self._pipeline = None if cluster or wait_replicas else CheckPipeline.from_url(url, timeout_s=self.timeout_s)
        # Network round trips that checks waited for; a check normally waits
        # for one, which it may share with other checks in a pipeline write.
        self.round_trips = 0
        self._last_failure_log = 0.0
        self._suppressed_failures = 0

    @staticmethod
    def _make_client(url: str, cluster: bool, timeout_s: float) -> Any:
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
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
                async with asyncio.timeout(self.timeout_s):
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
            keys += [f"{prefix}s:{check.session}", f"{prefix}b:{check.session}"]
            seq = check.seq
        args: list[str | int] = [
            check.ts_ms,
            self.max_skew_ms,
            seq,
            self.seq_window,
            self.session_ttl_ms,
            "1" if check.create_session else "0",
            "" if self._clock is None else self._clock(),
        ]
        return keys, args

    async def _run(self, keys: list[str], args: list[str | int]) -> Any:
        self.round_trips += 1
        try:
            return await self._evalsha(keys, args)
        except NoScriptError:
            # The server lost its script cache (restart, SCRIPT FLUSH,
            # failover). NOSCRIPT means nothing ran, so loading and running
            # again cannot apply the check twice.
            logger.warning("replay check script missing on Redis; loading it again")
            self.round_trips += 2
            self._script.sha = await self._client.script_load(CHECK_SCRIPT)
            return await self._evalsha(keys, args)

    async def _evalsha(self, keys: list[str], args: list[str | int]) -> Any:
        if self._pipeline is not None:
            return await self._pipeline.evalsha(self._script.sha, keys, args)
        return await self._client.evalsha(self._script.sha, len(keys), *keys, *args)

    async def _run_with_wait(self, keys: list[str], args: list[str | int]) -> Any:
        """Run the check and WAIT for replicas in one pipeline, one round trip."""
        for attempt in range(2):
            self.round_trips += 1
            if self.cluster:
                pipe = self._client.pipeline()
            else:
                pipe = self._client.pipeline(transaction=False)
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            reply, acknowledged = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and attempt == 0:
                self.round_trips += 1
                self._script.sha = await self._client.script_load(CHECK_SCRIPT)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acknowledged, Exception):
                raise acknowledged
            if reply[0] in (b"ok", "ok") and int(acknowledged) < self.wait_replicas:
                # The nonce is recorded on the primary only; a failover now
                # could forget it, so the command is not executed.
                raise RedisError(f"only {acknowledged} of {self.wait_replicas} replicas acknowledged the nonce")
            return reply
        raise RedisError("replay check script could not be loaded")  # pragma: no cover

    def _log_failure(self, identity: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_failure_log < 10:
            self._suppressed_failures += 1
            return
        logger.error(
            "replay store unavailable (client=%s error=%s: %s, %d similar errors suppressed)",
            identity,
            type(exc).__name__,
            exc,
            self._suppressed_failures,
        )
        self._last_failure_log = now
        self._suppressed_failures = 0
