"""A replay store with a programming error, to show how the server handles one.

Named by REPLAY_STORE in a test's serve process. A check whose nonce starts
with "explode" raises RuntimeError, which no layer expects.
"""

from realtime.replay import MemoryReplayStore, ReplayCheck, ReplayVerdict


class ExplodingReplayStore(MemoryReplayStore):
    async def check(self, check: ReplayCheck) -> ReplayVerdict:
        if check.nonce.startswith("explode"):
            raise RuntimeError("simulated programming error in the replay store")
        return await super().check(check)
