"""The event records on a real Redis (shared/event_store.py): the one layout the registrator writes and the api reads."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from fleet.clients import redis_client
from services.api.queries import Cursor, EventFilter, FleetView
from shared.contracts import ContractError, Event, EventState
from shared.event_store import INDEXED, EventStore, index_entries
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from tests.support.events import stored_event
from tests.support.settings import settings_from


def event(event_id: str, start_wall: float, *, state: EventState = EventState.CREATED, label: str = "person") -> Event:
    return stored_event(event_id, start_wall, state=state, label=label)


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


def fleet_event(i: int, rng: random.Random) -> Event:
    """One of many: 12 sources, three labels (dog rare), one in 20 in ERROR; starts 1 s apart, some shared. Objects
    enter none, one or both of two zones (the gate rarely), a car has a sub-label, one in 10 is stationary."""
    label = rng.choices(["person", "car", "dog"], [70, 25, 5])[0]
    state = EventState.ERROR if rng.random() < 0.05 else EventState.FINISHED
    zones = [z for z, share in (("drive", 0.4), ("gate", 0.03)) if rng.random() < share]
    sub_label = rng.choice(["cab", "minivan", "police van"]) if label == "car" else None
    changes = {"source_id": f"cam{i % 12}", "zones": zones, "sub_label": sub_label, "stationary": rng.random() < 0.1}
    return event(f"e{i:05d}", 1000.0 + i // 3, state=state, label=label).model_copy(update=changes)


async def save_all(store: EventStore, events: list[Event]) -> None:
    async with store.redis.pipeline(transaction=False) as pipe:
        for e in events:
            await store.save_in(pipe, e)
        await pipe.execute()


def matches(e: Event, field: str, value: str) -> bool:
    """Read from the record's own fields, not from index_entries: what the listing must answer, said another way."""
    got = getattr(e, INDEXED[field])
    if field == "zone":
        return value in got
    if field == "stationary":
        return value == ("true" if got else "false")
    return (got.value if field == "state" else got) == value


def expected(events: list[Event], where: EventFilter) -> list[str]:
    wanted = where.indexed()
    return [
        e.id
        for e in sorted(events, key=lambda e: (e.start_wall, e.id), reverse=True)
        if all(matches(e, f, v) for f, v in wanted.items())
        and (where.since is None or e.start_wall >= where.since)
        and (where.until is None or e.start_wall <= where.until)
    ]


async def test_filtered_listings_page_through_the_indexes_of_thousands_of_records(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    rng = random.Random(3)
    events = [fleet_event(i, rng) for i in range(3000)]
    await save_all(store, events)
    view = FleetView(client, keys)
    cases = [
        EventFilter(source_id="cam5"),
        EventFilter(label="dog"),
        EventFilter(state=EventState.ERROR),
        EventFilter(source_id="cam5", label="person", state=EventState.FINISHED),
        EventFilter(label="car", since=1300.0, until=1700.0),
        EventFilter(source_id="nobody"),
        EventFilter(zone="drive"),
        EventFilter(zone="gate", label="person"),
        EventFilter(sub_label="police van"),
        EventFilter(sub_label="cab", zone="drive", stationary=False),
        EventFilter(stationary=True, source_id="cam3"),
        EventFilter(stationary=False, since=1500.0),
        EventFilter(zone="nowhere"),
    ]
    for where in cases:
        want = expected(events, where)
        assert want or where in (EventFilter(source_id="nobody"), EventFilter(zone="nowhere")), where  # a real case
        first = await view.events(where, limit=25)
        assert [e.id for e in first.events] == want[:25], where
        got, cursor = [], None
        while True:  # every page, across the ties of shared start times
            page = await view.events(where, limit=40, cursor=cursor)
            got += [e.id for e in page.events]
            if page.next_cursor is None:
                break
            cursor = Cursor.decode(page.next_cursor.encode())
        assert got == want, where
    # A page reads what it returns: one source among 12, one page of 25, with few commands whatever the store's size.
    before = await _calls(client)
    await view.events(EventFilter(source_id="cam5"), limit=25)
    assert await _calls(client) - before <= 4  # ZCOUNT, ZREVRANGEBYSCORE, HMGET (+ the INFO)
    # The same for a zone: its own index, not the records filtered by what they entered.
    before = await _calls(client)
    await view.events(EventFilter(zone="gate"), limit=25)
    assert await _calls(client) - before <= 4


async def _calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def test_a_rare_combination_answers_short_pages_within_the_scan_budget(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    # person on even starts, FINISHED on odd ones: 600 each, and both only once, far down (e0003).
    events = [
        event(f"e{i:04d}", 1000.0 + i, label="person" if i % 2 == 0 or i == 3 else "car",
              state=EventState.FINISHED if i % 2 else EventState.CREATED)
        for i in range(1200)
    ]  # fmt: skip
    await save_all(store, events)
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while True:
        page, after = await store.page({"label": "person", "state": "FINISHED"}, 5, after=after, budget=200)
        pages.append([e.id for e in page])
        if after is None:
            break
    # Each call read at most 200 of the 600 ids of the narrowest index, not all of them: empty pages, then the match.
    assert len(pages) in (3, 4) and all(p == [] for p in pages[:-1]) and pages[-1] == ["e0003"]
    only, more = await store.page({"state": "FINISHED", "label": "person", "source": "cam0"}, 5)
    assert [e.id for e in only] == ["e0003"] and more is None


async def test_indexes_follow_updates_and_deletes(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    await store.save(event("e1", 100.0, label="car"))
    await store.save(event("e1", 100.0, label="person", state=EventState.FINISHED).model_copy(update={"stored_bytes": 700}))
    assert await client.zrange(keys.events_by("label", "car"), 0, -1) == []  # the label it had while it grew
    assert await client.zrange(keys.events_by("state", "CREATED"), 0, -1) == []
    assert await client.zrange(keys.events_by("label", "person"), 0, -1) == [b"e1"]
    assert await client.zrange(keys.events_by("source", "cam0"), 0, -1) == [b"e1"]
    await store.save(event("e2", 200.0).model_copy(update={"stored_bytes": 300}))
    assert await store.stored_bytes() == 1000
    ((member, _), *_) = await store.started_before(150.0)
    assert await store.delete(member, "e1") == 700
    assert await store.delete(member, "e1") == 0  # a repeat frees nothing twice
    assert await store.stored_bytes() == 300
    assert await client.zcard(keys.events_by("state", "FINISHED")) == 0
    for field, value in (("label", "person"), ("source", "cam0")):
        assert await client.zrange(keys.events_by(field, value), 0, -1) == [b"e2"]


async def test_records_from_before_the_indexes_are_backfilled_once(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    for e in (event(f"old{i}", 100.0 + i, label="dog" if i % 2 else "person") for i in range(7)):
        raw = e.model_copy(update={"stored_bytes": 10}).model_dump_json()  # written as the old layout did: no index
        await client.zadd(keys.events, {raw: e.start_wall})
        await client.hset(keys.event_index, e.id, raw)
    await client.zadd(keys.events, {b"not json": 50.0})  # skipped, counted
    view = FleetView(client, keys)
    assert (await view.events(EventFilter(label="dog"), limit=10)).events == []
    assert await store.backfill_indexes(chunk=3) == 7
    assert [e.id for e in (await view.events(EventFilter(label="dog"), limit=10)).events] == ["old5", "old3", "old1"]
    assert await store.stored_bytes() == 70
    assert await store.backfill_indexes() is None  # once: the mark says it is done


async def test_a_filtered_listing_skips_and_counts_a_record_that_does_not_parse(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    unreadable: list[ContractError] = []
    store = EventStore(client, keys, on_unreadable=unreadable.append)
    for i in range(3):
        await store.save(event(f"e{i}", 100.0 + i))
    # A record written by hand over e1's, its index entries left as they were.
    await client.hset(keys.event_index, "e1", b'{"v": 1, "id": "e1"}')
    page, more = await store.page({"source": "cam0"}, 10)
    assert [e.id for e in page] == ["e2", "e0"] and more is None
    assert len(unreadable) == 1


async def _indexes_of(client: Redis, keys: RedisKeys, event_id: str) -> set[tuple[str, str]]:
    """Every index (field, value) that lists `event_id`, found by scanning the index keys."""
    found = set()
    async for key in client.scan_iter(match=f"{keys.events_by_prefix}*", count=500):
        if await client.zscore(key, event_id) is not None:
            field, _, value = key.decode()[len(keys.events_by_prefix) :].partition(":")
            found.add((field, value))
    return found


async def test_zone_sub_label_and_stationary_indexes_follow_updates_and_deletes(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    store = EventStore(client, keys)
    growing = event("e1", 100.0, label="car").model_copy(update={"zones": ["street"]})
    await store.save(growing)
    # What the script indexes is what index_entries (the backfill's) says: the two cannot drift apart.
    assert await _indexes_of(client, keys, "e1") == set(index_entries(growing))
    assert ("stationary", "false") in set(index_entries(growing)) and not any(f == "sub_label" for f, _ in index_entries(growing))
    grown = growing.model_copy(
        update={"zones": ["street", "drive"], "sub_label": "police van", "stationary": True, "state": EventState.FINISHED}
    )
    await store.save(grown)
    assert (
        await _indexes_of(client, keys, "e1")
        == set(index_entries(grown))
        == {
            ("source", "cam0"),
            ("label", "car"),
            ("state", "FINISHED"),
            ("zone", "street"),
            ("zone", "drive"),
            ("sub_label", "police van"),
            ("stationary", "true"),
        }
    )
    assert await client.zcard(keys.events_by("stationary", "false")) == 0  # the flag it had while it moved
    view = FleetView(client, keys)
    listed = await view.events(EventFilter(zone="drive", sub_label="police van", stationary=True), limit=5)
    assert [e.id for e in listed.events] == ["e1"]
    assert (await view.events(EventFilter(zone="drive", stationary=False), limit=5)).events == []
    # Retention's delete takes every entry with the record.
    ((member, _),) = await store.started_before(150.0)
    await store.delete(member, "e1")
    assert await _indexes_of(client, keys, "e1") == set()


async def test_records_from_before_the_new_indexes_are_backfilled(redis: tuple[Redis, RedisKeys]) -> None:
    """A store indexed by version 1 (source, label, state) gets its zone, sub-label and stationary indexes once."""
    client, keys = redis
    store = EventStore(client, keys)
    old = event("old", 100.0, label="car").model_copy(update={"zones": ["drive"], "sub_label": "cab", "stationary": True})
    raw = old.model_dump_json()
    await client.zadd(keys.events, {raw: old.start_wall})
    await client.hset(keys.event_index, old.id, raw)
    await client.set(keys.events_indexed, "1")
    assert await store.backfill_indexes() == 1
    assert await _indexes_of(client, keys, "old") == set(index_entries(old))
    assert await store.backfill_indexes() is None
