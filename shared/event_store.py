"""The event records in Redis, for the registrator that writes them and the api that reads them.

Layout: the sorted set `RedisKeys.events` holds one JSON record per event, scored by its start (unix time),
and the hash `RedisKeys.event_index` maps an event id to its current record. Beside them, sorted sets of event
ids (`RedisKeys.events_by`), scored by the start too, one per source, label, state, zone entered, sub-label and
stationary flag, let a filtered listing read only what it returns; and `RedisKeys.events_stored_bytes` sums the
records' `stored_bytes` (the proofs' size in the filer) for retention by disk budget. All of them are written by
one script with the record, so they never disagree. Nothing else reads or writes these keys.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.contracts import ContractError, Event
from shared.keys import RedisKeys

# The indexed fields, as named in the index keys, and the record fields they read. An event is in one index per
# field and value: `zone` has one entry per zone it entered, `sub_label` none while it has none, `stationary` is
# `true` or `false`. index_entries below and _ENTRIES_LUA say the same, for the backfill and for the script.
INDEXED = {
    "source": "source_id",
    "label": "label",
    "state": "state",
    "zone": "zones",
    "sub_label": "sub_label",
    "stationary": "stationary",
}

# The member of a sorted set is its value, so an update must remove the previous JSON and add the new one in
# one step; the index hash remembers which JSON is current. The index entries of a record are read from its
# JSON by one function, for the record written and for the one it replaces (its label, state, zones and
# sub-label change as it grows); the previous record also says how many proof bytes it counted. The index keys
# are built here from their prefix (ARGV[4]): they are under the fleet's own prefix, which the roles' ACLs cover.
_ENTRIES_LUA = """
local SCALARS = {source = 'source_id', label = 'label', state = 'state', sub_label = 'sub_label'}
local function entries(doc)
  local out = {}
  for field, name in pairs(SCALARS) do
    if type(doc[name]) == 'string' then table.insert(out, field .. ':' .. doc[name]) end
  end
  if type(doc.zones) == 'table' then
    for _, zone in ipairs(doc.zones) do
      if type(zone) == 'string' then table.insert(out, 'zone:' .. zone) end
    end
  end
  table.insert(out, 'stationary:' .. tostring(doc.stationary == true))
  return out
end
"""
_UNINDEX_LUA = """
local function unindex(prefix, id, raw)
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' then return 0 end
  for _, entry in ipairs(entries(doc)) do redis.call('ZREM', prefix .. entry, id) end
  if type(doc.stored_bytes) == 'number' then return doc.stored_bytes end
  return 0
end
"""
_REPLACE = (
    _ENTRIES_LUA
    + _UNINDEX_LUA
    + """
local old = redis.call('HGET', KEYS[2], ARGV[1])
local old_bytes = 0
if old then
  redis.call('ZREM', KEYS[1], old)
  old_bytes = unindex(ARGV[4], ARGV[1], old)
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
for _, entry in ipairs(entries(cjson.decode(ARGV[3]))) do redis.call('ZADD', ARGV[4] .. entry, ARGV[2], ARGV[1]) end
local delta = tonumber(ARGV[5]) - old_bytes
if delta ~= 0 then redis.call('INCRBY', KEYS[3], delta) end
return 1
"""
)
# Removes the record `started_before` gave (ARGV[1]) and the current one of its id (ARGV[2]) if that differs,
# with their index entries; only a record still in the set takes its bytes off the meter, so a repeat is a no-op.
_DELETE = (
    _ENTRIES_LUA
    + _UNINDEX_LUA
    + """
local current = redis.call('HGET', KEYS[2], ARGV[2])
local records = {ARGV[1]}
if current and current ~= ARGV[1] then table.insert(records, current) end
local freed = 0
for _, raw in ipairs(records) do
  local present = redis.call('ZREM', KEYS[1], raw)
  local bytes = unindex(ARGV[3], ARGV[2], raw)
  if present == 1 then freed = freed + bytes end
end
redis.call('HDEL', KEYS[2], ARGV[2])
if freed ~= 0 then redis.call('DECRBY', KEYS[3], freed) end
return freed
"""
)

SCAN_CHUNK = 500
# A filtered page reads at most this many index entries: a combination that matches little (one source's rare
# label) answers a short page and a cursor after what it read, rather than reading a whole index in one request.
SCAN_BUDGET = 10_000
INDEX_VERSION = "2"  # 2: the zone, sub_label and stationary indexes
log = logging.getLogger("vigil.events")

Position = tuple[float, str]  # (start_wall, event id): where a newest-first listing stands


def index_entries(event: Event) -> list[tuple[str, str]]:
    """The (field, value) of each index that lists the event: what the script's `entries` reads from its JSON."""
    found = [("source", event.source_id), ("label", event.label), ("state", event.state.value)]
    if event.sub_label is not None:
        found.append(("sub_label", event.sub_label))
    found += [("zone", zone) for zone in event.zones]
    found.append(("stationary", "true" if event.stationary else "false"))
    return found


def narrowest(counts: Mapping[str, int]) -> str:
    """The index to walk for a listing filtered on several fields: the one with the fewest entries in the time
    range (ties: the first named), so a page reads at most that many ids and checks the others per id."""
    if not counts:
        raise ValueError("no index to choose from: a listing without filters walks the records themselves")
    return min(counts, key=lambda field: counts[field])


class EventStore:
    """on_unreadable: told of each record that does not parse (an id from before ids were checked, a record
    written by hand): it is skipped, so that one bad record never fails a listing."""

    def __init__(self, redis: Redis, keys: RedisKeys, on_unreadable: Callable[[ContractError], None] | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self._replace = redis.register_script(_REPLACE)
        self._delete = redis.register_script(_DELETE)
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
        """Add the event, or replace its previous record, with its index entries."""
        await self._replace(keys=self._keys(), args=self._args(event))

    async def save_in(self, pipe: Pipeline, event: Event) -> None:
        """The same, queued in the caller's pipeline (written together with what it depends on)."""
        await self._replace(keys=self._keys(), args=self._args(event), client=pipe)  # on a pipeline this queues

    async def delete(self, member: bytes, event_id: str) -> int:
        """Remove a record as `started_before` gave it, with its index entries; returns the proof bytes it freed."""
        freed = await self._delete(keys=self._keys(), args=[member, event_id, self.keys.events_by_prefix])
        return int(freed)

    async def backfill_indexes(self, chunk: int = SCAN_CHUNK) -> int | None:
        """Index the records written before the indexes existed (or before INDEX_VERSION's newest ones), and sum
        their stored bytes: once per version (a mark says it is done), and harmless if repeated. Returns how many
        records it indexed, None if done before.

        Run by the registrator at start, before it writes: the meter is set from the records it read."""
        if await self.redis.get(self.keys.events_indexed) == INDEX_VERSION.encode():
            return None
        indexed, stored, offset = 0, 0, 0
        while raws := cast(list[bytes], await self.redis.zrange(self.keys.events, offset, offset + chunk - 1)):
            async with self.redis.pipeline(transaction=False) as pipe:
                for raw in raws:
                    if (event := self._parse(raw)) is None:
                        continue  # listed by no index: retention still finds it by age, and removes it
                    for field, value in index_entries(event):
                        pipe.zadd(self.keys.events_by(field, value), {event.id: event.start_wall})
                    stored += event.stored_bytes
                    indexed += 1
                await pipe.execute()
            offset += len(raws)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.events_stored_bytes, stored)
            pipe.set(self.keys.events_indexed, INDEX_VERSION)
            await pipe.execute()
        return indexed

    # Reading (the api, retention, tests) --------------------------------------------------------

    async def get(self, event_id: str) -> Event | None:
        raw = await self.redis.hget(self.keys.event_index, event_id)
        return self._parse(raw) if raw else None

    async def stored_bytes(self) -> int:
        """What the events' proofs take in the filer, by their records."""
        return int(await self.redis.get(self.keys.events_stored_bytes) or 0)

    async def newest_first(
        self, *, newest: float | None = None, oldest: float | None = None, chunk: int = SCAN_CHUNK
    ) -> AsyncGenerator[Event, None]:
        """Events that started between `oldest` and `newest` (unix times, inclusive; None leaves that end open),
        the latest start first, read `chunk` records at a time: a caller that stops early reads no more."""
        high, low = _range(newest, oldest)
        offset = 0
        while True:
            raws = cast(list[bytes], await self.redis.zrevrangebyscore(self.keys.events, high, low, start=offset, num=chunk))
            for raw in raws:
                if (event := self._parse(raw)) is not None:
                    yield event
            if len(raws) < chunk:
                return
            offset += len(raws)

    async def page(
        self,
        equals: Mapping[str, str],
        limit: int,
        *,
        newest: float | None = None,
        oldest: float | None = None,
        after: Position | None = None,
        budget: int = SCAN_BUDGET,
    ) -> tuple[list[Event], Position | None]:
        """Up to `limit` events whose fields equal `equals` (field -> value, fields of INDEXED), newest first,
        started in [oldest, newest] and after `after`; and where the next page starts (None: no more).

        Walks the narrowest index from `newest` down; the other fields are checked per id with ZMSCORE, and only
        the ids that match are read (HMGET). Cost: O(log N + ids read), at most `budget` ids per call."""
        unknown = set(equals) - set(INDEXED)
        if unknown or not equals:
            raise ValueError(f"page() filters on {', '.join(INDEXED)} only (got {sorted(equals)})")
        if after is not None:
            newest = after[0] if newest is None else min(newest, after[0])
        high, low = _range(newest, oldest)
        index = {field: self.keys.events_by(field, value) for field, value in equals.items()}
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in index.values():
                pipe.zcount(key, low, high)
            counts = dict(zip(index, await pipe.execute(), strict=True))
        if min(counts.values()) == 0:
            return [], None
        drive = narrowest(counts)
        others = [key for field, key in index.items() if field != drive]
        chunk = max(2 * (limit + 1), 64)
        found: list[Event] = []
        offset, read = 0, 0
        while True:
            rows = cast(
                list[tuple[bytes, float]],
                await self.redis.zrevrangebyscore(index[drive], high, low, start=offset, num=chunk, withscores=True),
            )
            offset += len(rows)
            read += len(rows)
            ids = [m.decode() for m, score in rows if after is None or (score, m.decode()) < after]
            ids = await self._in_all(others, ids)
            for raw in cast(list[bytes | None], await self.redis.hmget(self.keys.event_index, ids) if ids else []):
                # None: removed (retention) since the index was read.
                if raw is not None and (event := self._parse(raw)) is not None:
                    found.append(event)
            if len(found) > limit:  # one more than asked says a next page exists
                last = found[limit - 1]
                return found[:limit], (last.start_wall, last.id)
            if len(rows) < chunk:
                return found, None
            if read >= budget:
                last_member, last_score = rows[-1]
                return found, (last_score, last_member.decode())
            chunk = min(chunk * 2, 1000, budget - read)  # the others filter much out: read more at a time

    async def _in_all(self, keys: list[str], ids: list[str]) -> list[str]:
        """The ids that are members of every one of `keys`, in their order."""
        if not keys or not ids:
            return ids
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zmscore(key, ids)
            scores = await pipe.execute()
        return [event_id for i, event_id in enumerate(ids) if all(s[i] is not None for s in scores)]

    async def started_before(self, unix_time: float, limit: int = SCAN_CHUNK) -> list[tuple[bytes, Event | None]]:
        """Oldest first, each with its member as stored (what `delete` removes); None for a record that does not
        parse, which retention must still be able to remove."""
        # No decode_responses, no scores: a list of bytes.
        raws = cast(list[bytes], await self.redis.zrangebyscore(self.keys.events, "-inf", f"({unix_time}", start=0, num=limit))
        return [(raw, self._parse(raw)) for raw in raws]

    async def oldest(self, limit: int = SCAN_CHUNK) -> list[tuple[bytes, Event | None]]:
        """The `limit` records that started first, as `started_before` gives them."""
        raws = cast(list[bytes], await self.redis.zrange(self.keys.events, 0, limit - 1))
        return [(raw, self._parse(raw)) for raw in raws]

    async def each(self, chunk: int = SCAN_CHUNK) -> AsyncGenerator[Event, None]:
        """Every record, oldest start first, read `chunk` at a time (by rank: a record added or removed meanwhile
        may shift one in or out of view)."""
        offset = 0
        while raws := cast(list[bytes], await self.redis.zrange(self.keys.events, offset, offset + chunk - 1)):
            for raw in raws:
                if (event := self._parse(raw)) is not None:
                    yield event
            offset += len(raws)

    async def all(self) -> list[Event]:
        """Every record, oldest start first."""
        raws = cast(list[bytes], await self.redis.zrange(self.keys.events, 0, -1))  # no decode_responses: bytes
        return [event for raw in raws if (event := self._parse(raw)) is not None]

    def _keys(self) -> list[str]:
        return [self.keys.events, self.keys.event_index, self.keys.events_stored_bytes]

    def _args(self, event: Event) -> list[str | float | int]:
        return [event.id, event.start_wall, event.model_dump_json(), self.keys.events_by_prefix, event.stored_bytes]


def _range(newest: float | None, oldest: float | None) -> tuple[str | float, str | float]:
    return ("+inf" if newest is None else newest), ("-inf" if oldest is None else oldest)
