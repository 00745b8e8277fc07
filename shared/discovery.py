"""Per-instance heartbeats in Redis: a model is live while at least one of its instances' keys exists."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis

from shared.contracts import ContractError, Heartbeat
from shared.keys import RedisKeys


class HeartbeatPublisher:
    """Writes this instance's key with EX ttl every ttl/3, so a dead instance vanishes by TTL alone."""

    def __init__(self, redis: Redis, keys: RedisKeys, ttl: int, beat: Callable[[], Heartbeat]) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.beat = beat
        self.log = logging.getLogger("vigil.discovery")
        self._soon = asyncio.Event()

    def soon(self) -> None:
        """Publish at once, not at the next third of the ttl: what the heartbeat says has just changed in a way the
        router acts on (a worker's rate, first measured, or doubled or halved since)."""
        self._soon.set()

    def _key(self, hb: Heartbeat) -> str:
        return self.keys.heartbeat(hb.model, hb.instance)

    async def publish_once(self) -> None:
        hb = self.beat()
        await self.redis.set(self._key(hb), hb.to_bytes(), ex=self.ttl)

    async def run(self, stop: asyncio.Event) -> None:
        failing = False
        while not stop.is_set():
            try:
                await self.publish_once()
                if failing:
                    self.log.info("heartbeats resumed")
                failing = False
            except Exception as exc:  # noqa: BLE001 - Redis away: keep trying, the TTL tells the truth meanwhile
                if not failing:
                    self.log.warning("heartbeat failed (Redis unreachable?): %r", exc)
                failing = True
            await self._wait(stop)

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until the next beat is due, `soon()` is called, or `stop` is set."""
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._soon.wait())}
        try:
            await asyncio.wait(waits, timeout=self.ttl / 3, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        self._soon.clear()

    async def remove(self) -> None:
        """Graceful shutdown: stop receiving work now rather than after the TTL."""
        try:
            await self.redis.delete(self._key(self.beat()))
        except Exception as exc:  # noqa: BLE001 - shutdown goes on; the TTL removes the heartbeat anyway
            self.log.warning("could not remove heartbeat: %r", exc)


async def live_instances(redis: Redis, keys: RedisKeys) -> dict[str, list[Heartbeat]]:
    """Live instances grouped by model name."""
    found: dict[str, list[Heartbeat]] = {}
    names = [k async for k in redis.scan_iter(match=keys.heartbeat_pattern, count=500)]
    if not names:
        return found
    for raw in await redis.mget(names):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            hb = Heartbeat.from_bytes(raw)
        except ContractError:
            continue
        found.setdefault(hb.model, []).append(hb)
    return found
