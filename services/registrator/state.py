"""What the registrator must not forget across a restart: open events, results seen (a bounded window per run of
a source and model), how sources ended. Nothing stays per event once it has finished.

Written in the same Redis pipeline as the event records, before the results behind it are acked, so a
registrator killed at any moment resumes where the acked results left it: nothing lost, nothing twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from services.registrator.events import OpenEvent
from services.registrator.window import SeenWindow
from shared.contracts import RoutingSummary, split_feed
from shared.keys import RedisKeys

_OPEN = TypeAdapter(OpenEvent)


@dataclass
class SavedSource:
    """What a replica taking a source reads back: everything the previous holder wrote of it."""

    open_events: list[OpenEvent] = field(default_factory=list)
    windows: dict[tuple[str, str], SeenWindow] = field(default_factory=dict)  # (feed, model)
    summaries: list[RoutingSummary] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # feeds
    ended_at: dict[str, float] = field(default_factory=dict)  # feed -> wall time
    trackers: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (feed, model) -> object tracker state

    def __bool__(self) -> bool:
        return bool(self.open_events or self.windows or self.summaries or self.ended)


class RegistratorState:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self.open_key = keys.registrator_open
        self.summary_key = keys.registrator_summaries
        self.ended_key = keys.registrator_ended
        self.ended_at_key = keys.registrator_ended_at
        self._seen_prefix = keys.registrator_seen_prefix
        self._window_prefix = keys.registrator_window_prefix
        self._tracker_prefix = keys.registrator_tracker_prefix

    def _seen(self, feed: str, model: str) -> str:
        return f"{self._seen_prefix}{feed}:{model}"

    def _window(self, feed: str, model: str) -> str:
        return f"{self._window_prefix}{feed}:{model}"

    # -- writes, into the caller's pipeline ------------------------------------------------------

    def keep(self, pipe: Pipeline, event: OpenEvent) -> None:
        pipe.hset(self.open_key, event.id, _OPEN.dump_json(event))

    async def drop(self, event_id: str) -> None:
        await self.redis.hdel(self.open_key, event_id)

    def window(self, pipe: Pipeline, feed: str, model: str, window: SeenWindow) -> None:
        """The whole window, replaced: a few kilobytes whatever the run's length."""
        pipe.set(self._window(feed, model), window.to_bytes())

    def tracker(self, pipe: Pipeline, feed: str, model: str, data: bytes) -> None:
        """The object tracker of a run and model, replaced whole (tens of kilobytes at most, flat over a run)."""
        pipe.set(f"{self._tracker_prefix}{feed}:{model}", data)

    def count(self, pipe: Pipeline, tally: Counter[tuple[str, str]]) -> None:
        """Add to the per-source totals the api serves; in the results' pipeline, so a redelivery counts once."""
        for (source_id, name), n in tally.items():
            pipe.hincrby(self.keys.totals(source_id), name, n)

    def summary(self, pipe: Pipeline, summary: RoutingSummary) -> None:
        pipe.hset(self.summary_key, summary.source_id, summary.to_bytes())

    async def mark_ended(self, source_id: str, wall_time: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self.ended_key, source_id)
            # Kept after the drain (one field per source, replaced by its next end): it tells a late copy of a
            # drained run's result from a result of the run after it.
            pipe.hset(self.ended_at_key, source_id, repr(wall_time))
            await pipe.execute()

    async def forget_source(self, source_id: str, models: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.summary_key, source_id)
            pipe.srem(self.ended_key, source_id)
            for model in models:
                pipe.delete(
                    self._window(source_id, model), self._seen(source_id, model), f"{self._tracker_prefix}{source_id}:{model}"
                )
            await pipe.execute()

    # -- reading back at start -------------------------------------------------------------------

    async def open_events(self) -> list[OpenEvent]:
        return [_OPEN.validate_json(raw) for raw in (await self.redis.hgetall(self.open_key)).values()]

    async def summaries(self) -> list[RoutingSummary]:
        return [RoutingSummary.from_bytes(raw) for raw in (await self.redis.hgetall(self.summary_key)).values()]

    async def ended_sources(self) -> set[str]:
        raws = cast(set[bytes], await self.redis.smembers(self.ended_key))  # no decode_responses: bytes
        return {raw.decode() for raw in raws}

    async def ended_at(self) -> dict[str, float]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.ended_at_key))  # no decode_responses: bytes
        return {k.decode(): float(v) for k, v in raw.items()}

    async def load_source(self, source_id: str, window_size: int) -> SavedSource:
        """Everything saved of one source (all its runs), for the replica that takes it."""
        return SavedSource(
            open_events=[e for e in await self.open_events() if e.source_id == source_id],
            windows=await self.windows(window_size, source_id),
            summaries=[s for s in await self.summaries() if s.source_id == source_id],
            ended={feed for feed in await self.ended_sources() if split_feed(feed)[0] == source_id},
            ended_at={feed: t for feed, t in (await self.ended_at()).items() if split_feed(feed)[0] == source_id},
            trackers=await self._per_feed(self._tracker_prefix, source_id),
        )

    async def windows(self, size: int, source_id: str) -> dict[tuple[str, str], SeenWindow]:
        """The seen windows of a source's runs. A run's feed key is `<source>@<run>`, or the bare source id for a run
        without an id."""
        return {pair: SeenWindow.from_bytes(raw) for pair, raw in (await self._per_feed(self._window_prefix, source_id)).items()}

    async def _per_feed(self, prefix: str, source_id: str) -> dict[tuple[str, str], bytes]:
        found: dict[tuple[str, str], bytes] = {}
        for pattern in (f"{prefix}{source_id}@*", f"{prefix}{source_id}:*"):
            async for key in self.redis.scan_iter(match=pattern, count=500):
                feed, model = key.decode()[len(prefix) :].split(":", 1)
                raw = cast(bytes | None, await self.redis.get(key))  # no decode_responses: bytes
                if raw is not None:
                    found[(feed, model)] = raw
        return found

    async def upgrade_seen_sets(self, size: int) -> int:
        """Seen sets left by an older version (one member per result) become windows, once: they are replaced."""
        upgraded = 0
        async for key in self.redis.scan_iter(match=f"{self._seen_prefix}*", count=500):
            feed, model = key.decode()[len(self._seen_prefix) :].split(":", 1)
            seqs = {int(m) for m in cast(set[bytes], await self.redis.smembers(key))}
            async with self.redis.pipeline(transaction=True) as pipe:
                self.window(pipe, feed, model, SeenWindow.of(size, seqs))
                pipe.delete(key)
                await pipe.execute()
            upgraded += 1
        return upgraded
