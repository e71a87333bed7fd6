"""How long and how wide each benchmark runs: ``full``, ``quick`` and ``tiny``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "Profile"]


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run.

    ``rounds`` alternates product and baseline measurements that many times.
    A ratio is the median of the rounds' ratios, so load that other
    processes put on the machine in one moment weighs on both sides of it.
    """

    name: str
    # Seconds measured per figure, after warmup_s seconds that are not counted.
    duration_s: float
    warmup_s: float
    rounds: int
    # Concurrent checks for the replay engine, concurrent clients for WebSocket and HTTP.
    engine_concurrency: tuple[int, ...]
    client_concurrency: tuple[int, ...]
    # Idle authenticated sockets held open at once, and the client processes holding them.
    idle_sockets: tuple[int, ...]
    idle_client_processes: int


PROFILES = {
    "full": Profile(
        name="full",
        duration_s=3.0,
        warmup_s=0.5,
        rounds=5,
        engine_concurrency=(1, 10, 50),
        client_concurrency=(1, 8, 32),
        idle_sockets=(1000, 5000),
        idle_client_processes=4,
    ),
    "quick": Profile(
        name="quick",
        duration_s=1.0,
        warmup_s=0.3,
        rounds=2,
        engine_concurrency=(1, 50),
        client_concurrency=(1, 32),
        idle_sockets=(250, 1000),
        idle_client_processes=2,
    ),
    # For the smoke test: every code path once, with figures too short to mean anything.
    "tiny": Profile(
        name="tiny",
        duration_s=0.2,
        warmup_s=0.05,
        rounds=1,
        engine_concurrency=(1, 50),
        client_concurrency=(1, 32),
        idle_sockets=(5, 10),
        idle_client_processes=1,
    ),
}
