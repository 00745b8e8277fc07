"""The event records in Redis, for the registrator that writes them and the api that reads them.

Layout: the sorted set `RedisKeys.events` holds one JSON record per event, scored by its start (unix time),
and the hash `RedisKeys.event_index` maps an event id to its current record. Nothing else reads or writes
these keys.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
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

SCAN_CHUNK = 500
log = logging.getLogger("vigil.events")


class EventStore:
    """on_unreadable: told of each record that does not parse (an id from before ids were checked, a record
    written by hand): it is skipped, so that one bad record never fails a listing."""

    def __init__(self, redis: Redis, keys: RedisKeys, on_unreadable: Callable[[ContractError], None] | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self._replace = redis.register_script(_REPLACE)
        self._on_unreadable = on_unreadable

    def _parse(self, raw: bytes | str) -> Event | None:
        try:
            return Event.from_bytes(raw)
        except ContractError as exc:
            log.warning("unreadable event record skipped: %s", exc)
            if self._on_unreadable is not None:
                self._on_unreadable(exc)
            return None

    # Writing (the registrator) ----------------------------------------------------------------

    async def save(self, event: Event) -> None:
        """Add the event, or replace its previous record."""
        await self._replace(keys=self._keys(), args=self._args(event))

    async def save_in(self, pipe: Pipeline, event: Event) -> None:
        """The same, queued in the caller's pipeline (written together with what it depends on)."""
        await self._replace(keys=self._keys(), args=self._args(event), client=pipe)  # on a pipeline this queues

    async def delete(self, member: bytes, event_id: str) -> None:
        """Remove a record as `started_before` gave it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.events, member)
            pipe.hdel(self.keys.event_index, event_id)
            await pipe.execute()

    # Reading (the api, retention, tests) --------------------------------------------------------

    async def get(self, event_id: str) -> Event | None:
        raw = await self.redis.hget(self.keys.event_index, event_id)
        return self._parse(raw) if raw else None

    async def newest_first(
        self, *, newest: float | None = None, oldest: float | None = None, chunk: int = SCAN_CHUNK
    ) -> AsyncGenerator[Event, None]:
        """Events that started between `oldest` and `newest` (unix times, inclusive; None leaves that end open),
        the latest start first, read `chunk` records at a time: a caller that stops early reads no more."""
        high: str | float = "+inf" if newest is None else newest
        low: str | float = "-inf" if oldest is None else oldest
        offset = 0
        while True:
            raws = cast(list[bytes], await self.redis.zrevrangebyscore(self.keys.events, high, low, start=offset, num=chunk))
            for raw in raws:
                if (event := self._parse(raw)) is not None:
                    yield event
            if len(raws) < chunk:
                return
            offset += len(raws)

    async def started_before(self, unix_time: float, limit: int = SCAN_CHUNK) -> list[tuple[bytes, Event | None]]:
        """Oldest first, each with its member as stored (what `delete` removes); None for a record that does not
        parse, which retention must still be able to remove."""
        # No decode_responses, no scores: a list of bytes.
        raws = cast(list[bytes], await self.redis.zrangebyscore(self.keys.events, "-inf", f"({unix_time}", start=0, num=limit))
        return [(raw, self._parse(raw)) for raw in raws]

    async def all(self) -> list[Event]:
        """Every record, oldest start first."""
        raws = cast(list[bytes], await self.redis.zrange(self.keys.events, 0, -1))  # no decode_responses: bytes
        return [event for raw in raws if (event := self._parse(raw)) is not None]

    def _keys(self) -> list[str]:
        return [self.keys.events, self.keys.event_index]

    @staticmethod
    def _args(event: Event) -> list[str | float]:
        return [event.id, event.start_wall, event.model_dump_json()]
