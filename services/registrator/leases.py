"""The registrator's source leases: the shared ones (shared/leases.py) under its own keys, `vigil:registrator:*`."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import leases
from shared.keys import RedisKeys
from shared.leases import LeaseLost, assign, plan_moves

__all__ = ["LeaseLost", "SourceLeases", "assign", "plan_moves"]

ROLE = "registrator"


class SourceLeases(leases.SourceLeases):
    def __init__(self, redis: Redis, keys: RedisKeys, replica: str, ttl: float) -> None:
        super().__init__(redis, keys, ROLE, replica, ttl)
