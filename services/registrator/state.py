"""What the registrator must not forget across a restart or a move, one record per source: its `SourceSession`.

Each source's session is one Redis hash (`RedisKeys.registrator_session`), so taking a source is one HGETALL
whatever the number of sources, and forgetting a run is one HDEL. Its fields:

- `event:<id>`: an event open, or closed and owed its proofs (removed once they are cut);
- `window:<feed>:<model>`: the run's dedup window of results seen, replaced whole;
- `tracker:<feed>:<model>`: the run's object tracker, replaced whole;
- `summary:<feed>`: the run's routing summary;
- `ended:<feed>`: the run ended, at this wall time (removed when it drains);
- `ended-at:<feed>`: the wall time of the run's end, kept after the drain: it tells a late copy of a drained run's
  result from a result of the run after it; removed at a later drain of the source once no copy can come any more
  (`results_stream_max_age` + `drain_timeout` after the end).

Written in the same Redis pipeline as the event records, before the results behind it are acked, so a
registrator killed at any moment resumes where the acked results left it: nothing lost, nothing twice.
Nothing stays per event once it has finished.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from services.registrator.events import OpenEvent
from services.registrator.window import SeenWindow
from shared.contracts import RoutingSummary, split_feed
from shared.keys import RedisKeys

_OPEN = TypeAdapter(OpenEvent)

EVENT, WINDOW, TRACKER, SUMMARY, ENDED, ENDED_AT = "event:", "window:", "tracker:", "summary:", "ended:", "ended-at:"


def _event(event_id: str) -> str:
    return f"{EVENT}{event_id}"


def _per_model(kind: str, feed: str, model: str) -> str:
    return f"{kind}{feed}:{model}"


def _feed_model(rest: str) -> tuple[str, str]:
    """`<feed>:<model>`: neither a source id nor a run id holds a colon (shared/contracts.py)."""
    feed, _, model = rest.partition(":")
    return feed, model


@dataclass
class SourceSession:
    """Everything saved of one source (all its runs): what a replica taking it reads back."""

    open_events: list[OpenEvent] = field(default_factory=list)
    windows: dict[tuple[str, str], SeenWindow] = field(default_factory=dict)  # (feed, model)
    summaries: list[RoutingSummary] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # feeds
    ended_at: dict[str, float] = field(default_factory=dict)  # feed -> wall time
    trackers: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (feed, model) -> object tracker state

    def __bool__(self) -> bool:
        return bool(self.open_events or self.windows or self.summaries or self.ended)

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> SourceSession:
        session = cls()
        for raw_name, raw in fields.items():
            name = raw_name.decode()
            if name.startswith(EVENT):
                session.open_events.append(_OPEN.validate_json(raw))
            elif name.startswith(WINDOW):
                session.windows[_feed_model(name.removeprefix(WINDOW))] = SeenWindow.from_bytes(raw)
            elif name.startswith(TRACKER):
                session.trackers[_feed_model(name.removeprefix(TRACKER))] = raw
            elif name.startswith(SUMMARY):
                session.summaries.append(RoutingSummary.from_bytes(raw))
            elif name.startswith(ENDED_AT):  # before ENDED, which it starts with
                session.ended_at[name.removeprefix(ENDED_AT)] = float(raw)
            elif name.startswith(ENDED):
                session.ended.add(name.removeprefix(ENDED))
        return session


class RegistratorState:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    def _session_key(self, source_id: str) -> str:
        return self.keys.registrator_session(source_id)

    def _feed_key(self, feed: str) -> str:
        return self._session_key(split_feed(feed)[0])

    # -- writes: those of the results and closed events into the caller's (fenced) pipeline -----------

    def keep(self, pipe: Pipeline, event: OpenEvent) -> None:
        pipe.hset(self._session_key(event.source_id), _event(event.id), _OPEN.dump_json(event))

    async def drop(self, event: OpenEvent) -> None:
        """The event's proofs are cut (or given up on): nothing of it stays."""
        await self.redis.hdel(self._session_key(event.source_id), _event(event.id))

    def window(self, pipe: Pipeline, feed: str, model: str, window: SeenWindow) -> None:
        """The whole window, replaced: a few kilobytes whatever the run's length."""
        pipe.hset(self._feed_key(feed), _per_model(WINDOW, feed, model), window.to_bytes())

    def tracker(self, pipe: Pipeline, feed: str, model: str, data: bytes) -> None:
        """The object tracker of a run and model, replaced whole (tens of kilobytes at most, flat over a run)."""
        pipe.hset(self._feed_key(feed), _per_model(TRACKER, feed, model), data)

    def count(self, pipe: Pipeline, tally: Counter[tuple[str, str]]) -> None:
        """Add to the per-source totals the api serves; in the results' pipeline, so a redelivery counts once."""
        for (source_id, name), n in tally.items():
            pipe.hincrby(self.keys.totals(source_id), name, n)

    def summary(self, pipe: Pipeline, summary: RoutingSummary) -> None:
        pipe.hset(self._session_key(summary.source_id), f"{SUMMARY}{summary.feed}", summary.to_bytes())

    async def mark_ended(self, feed: str, wall_time: float) -> None:
        # ENDED_AT stays after the drain (one field per run): late copies of its results are told by it.
        mapping = {f"{ENDED}{feed}": repr(wall_time), f"{ENDED_AT}{feed}": repr(wall_time)}
        await self.redis.hset(self._feed_key(feed), mapping=mapping)  # type: ignore[arg-type]

    async def forget_run(self, feed: str, models: list[str], expired: list[str]) -> None:
        """A drained run: its fields go, one HDEL; its end time stays (ENDED_AT), and its events went with their
        proofs. The end times of the source's `expired` runs (SourceBook.expire_ended) go with them."""
        fields = [f"{SUMMARY}{feed}", f"{ENDED}{feed}", *(f"{ENDED_AT}{old}" for old in expired)]
        fields += [_per_model(kind, feed, model) for model in models for kind in (WINDOW, TRACKER)]
        await self.redis.hdel(self._feed_key(feed), *fields)

    # -- reading back when a source is taken -----------------------------------------------------

    async def load_source(self, source_id: str) -> SourceSession:
        """Everything saved of one source (all its runs), for the replica that takes it: one read."""
        fields = cast(dict[bytes, bytes], await self.redis.hgetall(self._session_key(source_id)))  # bytes: no decoding
        return SourceSession.from_fields(fields)

    # -- upgrading a store of an older version, once at start ------------------------------------

    async def upgrade_layout(self, window_size: int) -> int:
        """The global keys of versions before the per-source session (and the seen sets of still older ones) become
        fields of each source's session, in one transaction that also deletes them; returns how many keys went.

        The transaction WATCHes every key it read: if another replica, starting at the same time, upgraded first,
        this one starts again and finds nothing left, so what the other wrote since is never overwritten."""
        while True:
            try:
                return await self._upgrade_once(window_size)
            except WatchError:
                continue

    async def _upgrade_once(self, window_size: int) -> int:
        k = self.keys
        singles = [
            k.legacy_registrator_open,
            k.legacy_registrator_summaries,
            k.legacy_registrator_ended,
            k.legacy_registrator_ended_at,
        ]
        per_run: dict[str, list[bytes]] = {}  # prefix -> its keys, one per (feed, model)
        for prefix in (k.legacy_registrator_window_prefix, k.legacy_registrator_tracker_prefix, k.legacy_registrator_seen_prefix):
            per_run[prefix] = [key async for key in self.redis.scan_iter(match=f"{prefix}*", count=500)]
        scanned = [key for keys in per_run.values() for key in keys]
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(*singles, *scanned)
            old = [key for key in singles if await pipe.exists(key)] + scanned
            if not old:
                return 0
            sessions = await self._read_legacy(pipe, per_run, window_size)
            pipe.multi()  # type: ignore[no-untyped-call]
            for source_id, fields in sessions.items():
                pipe.hset(self._session_key(source_id), mapping=fields)  # type: ignore[arg-type]
            pipe.delete(*old)
            await pipe.execute()
        return len(old)

    async def _read_legacy(
        self, pipe: Pipeline, per_run: dict[str, list[bytes]], window_size: int
    ) -> dict[str, dict[str, bytes]]:
        """The legacy keys' contents as the fields of each source's session (source id -> field -> value)."""
        k = self.keys
        sessions: dict[str, dict[str, bytes]] = {}

        def put(feed: str, name: str, value: bytes) -> None:
            sessions.setdefault(split_feed(feed)[0], {})[name] = value

        for raw in cast(dict[bytes, bytes], await pipe.hgetall(k.legacy_registrator_open)).values():
            event = _OPEN.validate_json(raw)
            put(event.feed, _event(event.id), raw)
        for raw in cast(dict[bytes, bytes], await pipe.hgetall(k.legacy_registrator_summaries)).values():
            summary = RoutingSummary.from_bytes(raw)
            put(summary.feed, f"{SUMMARY}{summary.feed}", raw)
        ended_at = cast(dict[bytes, bytes], await pipe.hgetall(k.legacy_registrator_ended_at))
        for raw_feed, t in ended_at.items():
            put(raw_feed.decode(), f"{ENDED_AT}{raw_feed.decode()}", t)
        for raw_feed in cast(set[bytes], await pipe.smembers(k.legacy_registrator_ended)):
            put(raw_feed.decode(), f"{ENDED}{raw_feed.decode()}", ended_at.get(raw_feed, b"0.0"))
        for kind, prefix in ((WINDOW, k.legacy_registrator_window_prefix), (TRACKER, k.legacy_registrator_tracker_prefix)):
            for key in per_run[prefix]:
                if (value := cast(bytes | None, await pipe.get(key))) is not None:
                    feed, model = _feed_model(key.decode().removeprefix(prefix))
                    put(feed, _per_model(kind, feed, model), value)
        # After the windows: a seen set replaces the window of its run, as its upgrade always did.
        for key in per_run[k.legacy_registrator_seen_prefix]:
            feed, model = _feed_model(key.decode().removeprefix(k.legacy_registrator_seen_prefix))
            seqs = {int(m) for m in cast(set[bytes], await pipe.smembers(key))}
            put(feed, _per_model(WINDOW, feed, model), SeenWindow.of(window_size, seqs).to_bytes())
        return sessions
