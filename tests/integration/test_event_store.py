"""The event records on a real Redis (shared/event_store.py): the one layout the registrator writes and the api reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from fleet.clients import redis_client
from services.api.queries import Cursor, EventFilter, FleetView
from shared.contracts import Event, EventState
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from tests.support.settings import settings_from


def event(event_id: str, start_wall: float, *, state: EventState = EventState.CREATED, label: str = "person") -> Event:
    return Event(
        id=event_id,
        source_id="cam0",
        model="ssd",
        label=label,
        label_counts={label: 1},
        state=state,
        start=0.0,
        end=1.0,
        start_wall=start_wall,
        frames=1,
        best_score=0.9,
        best_frame_seq=0,
        updated_at=start_wall,
    )


@pytest.fixture
async def redis(service_env: dict[str, str]) -> AsyncIterator[tuple[Redis, RedisKeys]]:
    settings = settings_from(VigilSettings, service_env)
    client = redis_client(settings)
    try:
        yield client, RedisKeys(settings)  # the test's own prefix: its keys are its own
    finally:
        await client.aclose()


async def test_an_update_replaces_the_record_in_place(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    await store.save(event("e1", 100.0))
    await store.save(event("e1", 100.0, state=EventState.FINISHED))
    assert [e.state for e in await store.all()] == [EventState.FINISHED]  # one record, not two
    assert await client.zcard(keys.events) == 1
    got = await store.get("e1")
    assert got is not None and got.state is EventState.FINISHED
    assert await store.get("nope") is None


async def test_a_save_in_a_pipeline_lands_with_the_pipeline(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    async with client.pipeline(transaction=True) as pipe:
        await store.save_in(pipe, event("e1", 100.0))
        assert await store.get("e1") is None  # queued, not sent
        await pipe.execute()
    assert [e.id for e in await store.all()] == ["e1"]


async def test_listing_by_start_time_both_ways(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    for i, start in enumerate([300.0, 100.0, 500.0, 200.0, 400.0]):
        await store.save(event(f"e{i}", start))
    assert [e.start_wall for e in await store.all()] == [100.0, 200.0, 300.0, 400.0, 500.0]
    # Chunks smaller than the set: every record once, the latest start first.
    newest = [e.start_wall async for e in store.newest_first(chunk=2)]
    assert newest == [500.0, 400.0, 300.0, 200.0, 100.0]
    bounded = [e.start_wall async for e in store.newest_first(newest=400.0, oldest=200.0, chunk=2)]
    assert bounded == [400.0, 300.0, 200.0]  # both ends inclusive
    old = await store.started_before(300.0)  # exclusive: the one at 300 stays
    assert [e.start_wall for _, e in old] == [100.0, 200.0]
    for member, gone in old:
        await store.delete(member, gone.id)
    assert [e.start_wall for e in await store.all()] == [300.0, 400.0, 500.0]
    assert await store.get(old[0][1].id) is None  # gone from the index too


async def test_the_api_pages_through_the_store(redis: tuple[Redis, RedisKeys]) -> None:
    """What the registrator saves is what the api lists: newest first, filtered, and paged by cursor across ties."""
    client, keys = redis
    store = EventStore(client, keys)
    for i in range(7):
        # Pairs share a start time, so a page may end between two events of the same score.
        await store.save(event(f"e{i}", 100.0 + i // 2, label="dog" if i == 3 else "person"))
    view = FleetView(client, keys)
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = await view.events(EventFilter(label="person"), limit=2, cursor=cursor)
        seen += [e.id for e in page.events]
        if page.next_cursor is None:
            break
        cursor = Cursor.decode(page.next_cursor.encode())
    assert seen == ["e6", "e5", "e4", "e2", "e1", "e0"]  # every person once, none skipped at a tie
    since = await view.events(EventFilter(since=102.0), limit=10)
    assert [e.id for e in since.events] == ["e6", "e5", "e4"] and since.next_cursor is None
    assert await view.event("e3") == await store.get("e3")
