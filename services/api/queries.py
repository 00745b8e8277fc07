"""The api's read side: events, sources, live workers and totals, straight from what the fleet keeps in Redis."""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from prometheus_client import Counter
from redis.asyncio import Redis

from shared.contracts import Contract, ContractError, Event, EventState, SourceHealth
from shared.discovery import live_instances
from shared.event_store import EventStore
from shared.keys import (
    ROUTED_FRAMES,
    ROUTED_SHED,
    ROUTED_TASKS,
    TOTAL_ERRORS,
    TOTAL_EVENTS,
    TOTAL_INFERRED,
    TOTAL_LINE,
    RedisKeys,
)

log = logging.getLogger("vigil.api.queries")
# How many of a source's newest events a search for a recent key frame reads: past that, none is "recent".
KEYFRAME_SEARCH = 200
C = TypeVar("C", bound=Contract)


@dataclass(frozen=True)
class EventFilter:
    source_id: str | None = None
    label: str | None = None
    state: EventState | None = None
    since: float | None = None  # unix time, inclusive, on the event's start
    until: float | None = None  # unix time, inclusive
    zone: str | None = None  # events that entered this zone
    sub_label: str | None = None
    stationary: bool | None = None

    def indexed(self) -> dict[str, str]:
        """The filters that have an index (shared/event_store.py INDEXED): field -> value as the index names it."""
        wanted = {
            "source": self.source_id,
            "label": self.label,
            "state": self.state.value if self.state else None,
            "zone": self.zone,
            "sub_label": self.sub_label,
            "stationary": None if self.stationary is None else ("true" if self.stationary else "false"),
        }
        return {field: value for field, value in wanted.items() if value is not None}


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last event's start time and id (events sort newest first, then by id)."""

    start_wall: float
    event_id: str

    def encode(self) -> str:
        return f"{self.start_wall!r}_{self.event_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        score, sep, event_id = text.partition("_")
        try:
            value = float(score)
        except ValueError:
            value = float("nan")
        if not sep or not event_id or value != value:
            raise ValueError(f"cursor {text!r} is not one this api gave out")
        return cls(value, event_id)

    def after(self, event: Event) -> bool:
        """Whether `event` comes after the cursor in newest-first order."""
        return (event.start_wall, event.id) < (self.start_wall, self.event_id)


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    next_cursor: Cursor | None


class FleetView:
    def __init__(self, redis: Redis, keys: RedisKeys, unreadable: Counter | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.unreadable = unreadable  # by kind: records skipped because they do not parse
        self.events_store = EventStore(redis, keys, on_unreadable=lambda exc: self._count_unreadable(Event))

    def _count_unreadable(self, contract: type[Contract]) -> None:
        if self.unreadable is not None:
            self.unreadable.labels(kind=contract.__name__).inc()

    def _parse(self, contract: type[C], raw: bytes | str) -> C | None:
        """The record, or None (counted, logged) when it does not parse: one bad record must not fail a listing."""
        try:
            return contract.from_bytes(raw)
        except ContractError as exc:
            self._count_unreadable(contract)
            log.warning("unreadable record skipped: %s", exc)
            return None

    async def event(self, event_id: str) -> Event | None:
        return await self.events_store.get(event_id)

    async def events(self, where: EventFilter, limit: int, cursor: Cursor | None = None) -> EventPage:
        """Newest first. Filtered on source, label, state, zone, sub-label or stationary, the page walks the
        narrowest of those indexes (shared/event_store.py); with the time range alone it reads the records in order.
        Either way a page costs O(log N + what it reads), not a scan of everything newer."""
        newest = where.until
        if cursor is not None:
            newest = cursor.start_wall if newest is None else min(cursor.start_wall, newest)
        equals = where.indexed()
        if equals:
            after = (cursor.start_wall, cursor.event_id) if cursor is not None else None
            events, more = await self.events_store.page(equals, limit, newest=newest, oldest=where.since, after=after)
            return EventPage(events, Cursor(*more) if more is not None else None)
        found: list[Event] = []
        # limit + 2: one more says a next page exists, and one is the cursor's own event (its start is inclusive).
        async with aclosing(self.events_store.newest_first(newest=newest, oldest=where.since, chunk=limit + 2)) as scan:
            async for event in scan:
                if cursor is not None and not cursor.after(event):
                    continue
                found.append(event)
                if len(found) > limit:  # one more than asked says whether a next page exists
                    last = found[limit - 1]
                    return EventPage(found[:limit], Cursor(last.start_wall, last.id))
        return EventPage(found, None)

    async def newest_with_keyframe(self, source_id: str, budget: int = KEYFRAME_SEARCH) -> Event | None:
        """The source's newest event that has a key frame, among its `budget` newest (open events have none yet)."""
        after: tuple[float, str] | None = None
        for _ in range(0, budget, 20):
            events, after = await self.events_store.page({"source": source_id}, 20, after=after)
            for event in events:
                if event.image_proofs:
                    return event
            if after is None:
                return None
        return None

    async def has_source(self, source_id: str) -> bool:
        """Whether the source has events or a health record (a source that runs but saw nothing yet)."""
        if await self.redis.zcard(self.keys.events_by("source", source_id)):
            return True
        return bool(await self.redis.exists(self.keys.source_health(source_id)))

    async def sources(self) -> list[SourceHealth]:
        names = sorted([k async for k in self.redis.scan_iter(match=self.keys.source_health_pattern, count=500)])
        healths = []
        for raw in await self.redis.mget(names) if names else []:
            if raw is not None and (health := self._parse(SourceHealth, raw)) is not None:  # None: expired since SCAN
                healths.append(health)
        return sorted(healths, key=lambda h: h.source_id)

    async def workers(self) -> dict[str, list[dict[str, Any]]]:
        found = await live_instances(self.redis, self.keys)
        return {
            model: [hb.model_dump() for hb in sorted(beats, key=lambda b: b.instance)] for model, beats in sorted(found.items())
        }

    async def totals(self) -> dict[str, dict[str, Any]]:
        """Per source: frames read, published and dropped (reader), routed per model (router), inferred,
        error results and events (registrator)."""
        health = {h.source_id: h for h in await self.sources()}
        ids = set(health) | set(await self._ids_of(self.keys.totals("*")))
        out: dict[str, dict[str, Any]] = {}
        for source_id in sorted(ids):
            counted = _decode_hash(cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.totals(source_id))))
            h = health.get(source_id)
            models = sorted(
                {k[len(p) :] for p in (ROUTED_TASKS, ROUTED_SHED, TOTAL_INFERRED) for k in counted if k.startswith(p)}
            )
            out[source_id] = {
                "frames_read": h.frames_read if h else None,
                "frames_published": h.frames_published if h else None,
                "frames_dropped": sum(h.frames_dropped.values()) if h else None,
                "frames_routed": counted.get(ROUTED_FRAMES, 0),
                "events": counted.get(TOTAL_EVENTS, 0),
                "models": {
                    m: {
                        "routed": counted.get(ROUTED_TASKS + m, 0),
                        "shed": counted.get(ROUTED_SHED + m, 0),
                        "inferred": counted.get(TOTAL_INFERRED + m, 0),
                        "errors": counted.get(TOTAL_ERRORS + m, 0),
                    }
                    for m in models
                },
                "lines": _lines(counted),
            }
        return out

    async def _ids_of(self, pattern: str) -> list[str]:
        prefix = pattern[:-1]
        return [k.decode()[len(prefix) :] async for k in self.redis.scan_iter(match=pattern, count=500)]


def _lines(counted: dict[str, int]) -> dict[str, dict[str, dict[str, int]]]:
    """`line:<line>:<label>:<in|out>` fields -> line -> label -> {"in": n, "out": n}."""
    lines: dict[str, dict[str, dict[str, int]]] = {}
    for field, n in counted.items():
        if field.startswith(TOTAL_LINE):
            line, label, direction = field[len(TOTAL_LINE) :].rsplit(":", 2)
            lines.setdefault(line, {}).setdefault(label, {"in": 0, "out": 0})[direction] = n
    return lines


def _decode_hash(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}
