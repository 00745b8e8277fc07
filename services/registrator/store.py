"""Event records in Redis: the sorted set `events` (score = start time) holds one JSON record per event."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.contracts import ContractError, Event
from shared.keys import RedisKeys

# The member of a sorted set is its value, so an update must remove the previous JSON and add
# the new one in one step; the index hash remembers which JSON is current.
_REPLACE = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then redis.call('ZREM', KEYS[1], old) end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""


class EventStore:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._replace = redis.register_script(_REPLACE)

    async def save(self, event: Event) -> None:
        await self._replace(
            keys=[self.keys.events, self.keys.event_index], args=[event.id, event.start_wall, event.model_dump_json()]
        )

    async def save_in(self, pipe: Pipeline, event: Event) -> None:
        """The same, queued in the caller's pipeline (written together with what it depends on)."""
        keys = [self.keys.events, self.keys.event_index]
        args: list[str | float] = [event.id, event.start_wall, event.model_dump_json()]
        await self._replace(keys=keys, args=args, client=pipe)  # on a pipeline this queues, it does not send

    async def get(self, event_id: str) -> Event | None:
        raw = await self.redis.hget(self.keys.event_index, event_id)
        return Event.from_bytes(raw) if raw else None

    async def started_before(self, unix_time: float, limit: int = 500) -> list[tuple[bytes, Event | None]]:
        """Oldest first, each with its member as stored (what `delete` removes); None for a record that does not
        parse (an id from before ids were checked), which retention must still be able to remove."""
        # No decode_responses, no scores: a list of bytes.
        raws = cast(list[bytes], await self.redis.zrangebyscore(self.keys.events, "-inf", f"({unix_time}", start=0, num=limit))
        return [(raw, _parsed(raw)) for raw in raws]

    async def delete(self, member: bytes, event_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.events, member)
            pipe.hdel(self.keys.event_index, event_id)
            await pipe.execute()

    async def all(self) -> list[Event]:
        raws = cast(list[bytes], await self.redis.zrange(self.keys.events, 0, -1))  # no decode_responses: bytes
        return [Event.from_bytes(raw) for raw in raws]


def _parsed(raw: bytes) -> Event | None:
    try:
        return Event.from_bytes(raw)
    except ContractError:
        return None
