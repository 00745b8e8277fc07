"""The registrator's saved state against the real Redis: one hash per source (its session), read back in one command,
forgotten run by run, and an older version's global keys brought into it once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pydantic import TypeAdapter
from redis.asyncio import Redis

from fleet.clients import redis_client
from services.registrator.events import OpenEvent
from services.registrator.settings import RegistratorSettings
from services.registrator.state import RegistratorState, SourceSession
from services.registrator.window import SeenWindow
from shared.contracts import RoutingSummary
from shared.keys import RedisKeys
from tests.support.settings import MakeSettings

pytestmark = pytest.mark.timeout(60)

WINDOW = 1024
MODELS = ["ssd", "effnet"]


def open_event(event_id: str, source_id: str, run: str) -> OpenEvent:
    return OpenEvent(id=event_id, source_id=source_id, model="ssd", label="person", start=0.0, end=1.0, start_wall=100.0, run=run)


def window(*seqs: int) -> SeenWindow:
    return SeenWindow.of(WINDOW, set(seqs))


def summary(source_id: str, run: str) -> RoutingSummary:
    return RoutingSummary(source_id=source_id, run=run, frames_routed=3, tasks={"ssd": 3}, wall_time=200.0)


async def own_keys(redis: Redis, keys: RedisKeys) -> list[str]:
    """Every key of the registrator's saved state under the test's prefix (leases are not state)."""
    ns = keys.registrator_session_prefix.removesuffix("session:")
    found = [key.decode() async for key in redis.scan_iter(match=f"{ns}*", count=500)]
    return sorted(k for k in found if ":lease" not in k and not k.endswith(":replicas"))


async def commands(redis: Redis) -> Counter[str]:
    """The commands the server ran, by name (INFO itself left out)."""
    stats = await redis.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info"})


async def save_two_runs(state: RegistratorState) -> None:
    """What the registrator writes of cam7 over two runs and two models, and of cam70 (an id that cam7 starts)."""
    async with state.redis.pipeline(transaction=True) as pipe:
        for run in ("r1", "r2"):
            state.keep(pipe, open_event(f"cam7-{run}", "cam7", run))
            for model in MODELS:
                state.window(pipe, f"cam7@{run}", model, window(1, 2, 3))
                state.tracker(pipe, f"cam7@{run}", model, f"tracker {run} {model}".encode())
        state.summary(pipe, summary("cam7", "r1"))
        state.keep(pipe, open_event("cam70-r1", "cam70", "r1"))
        state.window(pipe, "cam70@r1", "ssd", window(9))
        await pipe.execute()
    await state.mark_ended("cam7@r1", 300.0)


async def test_a_sources_saved_state_is_one_key_restored_with_one_read(redis: Redis, make_settings: MakeSettings) -> None:
    keys = RedisKeys(make_settings(RegistratorSettings))
    state = RegistratorState(redis, keys)
    await save_two_runs(state)
    assert await own_keys(redis, keys) == [keys.registrator_session("cam7"), keys.registrator_session("cam70")]

    before = await commands(redis)
    session = await state.load_source("cam7")
    assert await commands(redis) - before == Counter({"hgetall": 1})  # one read, whatever else Redis holds

    assert sorted(e.id for e in session.open_events) == ["cam7-r1", "cam7-r2"]  # not cam70's
    assert set(session.windows) == {(f"cam7@{run}", model) for run in ("r1", "r2") for model in MODELS}
    assert all(w.count == 3 for w in session.windows.values())
    assert session.trackers[("cam7@r2", "effnet")] == b"tracker r2 effnet"
    assert session.summaries == [summary("cam7", "r1")]
    assert session.ended == {"cam7@r1"} and session.ended_at == {"cam7@r1": 300.0}

    # The run r1 drains: its fields go, its end time stays; its event went with its proofs.
    await state.drop(open_event("cam7-r1", "cam7", "r1"))
    await state.forget_run("cam7@r1", MODELS, [])
    after = await state.load_source("cam7")
    assert [e.id for e in after.open_events] == ["cam7-r2"]
    assert {feed for feed, _ in after.windows} == {feed for feed, _ in after.trackers} == {"cam7@r2"}
    assert not after.summaries and not after.ended and after.ended_at == {"cam7@r1": 300.0}

    # A later run drains once no copy of r1's results can come: r1's end time goes with r2's fields.
    await state.mark_ended("cam7@r2", 400.0)
    await state.forget_run("cam7@r2", MODELS, ["cam7@r1"])
    assert (await state.load_source("cam7")).ended_at == {"cam7@r2": 400.0}
    assert [e.id for e in (await state.load_source("cam70")).open_events] == ["cam70-r1"]
    assert not await state.load_source("cam8")  # a source never seen: nothing saved


async def write_old_layout(redis: Redis, keys: RedisKeys) -> None:
    """The keys the version before issue 17 wrote, over all sources (and a seen set of a still older one)."""
    dump = TypeAdapter(OpenEvent).dump_json
    await redis.hset(
        keys.legacy_registrator_open,
        mapping={"cam7-r1": dump(open_event("cam7-r1", "cam7", "r1")), "cam9-a": dump(open_event("cam9-a", "cam9", ""))},
    )
    await redis.hset(keys.legacy_registrator_summaries, "cam7", summary("cam7", "r1").to_bytes())
    await redis.sadd(keys.legacy_registrator_ended, "cam7@r1")
    await redis.hset(keys.legacy_registrator_ended_at, mapping={"cam7@r1": "300.0", "cam7@r0": "250.0"})
    await redis.set(f"{keys.legacy_registrator_window_prefix}cam7@r1:ssd", window(1, 2, 3).to_bytes())
    await redis.set(f"{keys.legacy_registrator_tracker_prefix}cam7@r1:ssd", b"tracker")
    await redis.sadd(f"{keys.legacy_registrator_seen_prefix}cam9:ssd", *range(10))


def assert_restored(cam7: SourceSession, cam9: SourceSession) -> None:
    assert [e.id for e in cam7.open_events] == ["cam7-r1"] and [e.id for e in cam9.open_events] == ["cam9-a"]
    assert cam7.summaries == [summary("cam7", "r1")]
    assert cam7.ended == {"cam7@r1"} and cam7.ended_at == {"cam7@r1": 300.0, "cam7@r0": 250.0}
    assert cam7.windows[("cam7@r1", "ssd")].count == 3 and cam7.trackers == {("cam7@r1", "ssd"): b"tracker"}
    assert cam9.windows[("cam9", "ssd")].count == 10  # the seen set became a window


async def test_an_older_versions_state_becomes_per_source_sessions_once(redis: Redis, make_settings: MakeSettings) -> None:
    keys = RedisKeys(make_settings(RegistratorSettings))
    await write_old_layout(redis, keys)
    state = RegistratorState(redis, keys)
    assert await state.upgrade_layout(WINDOW) == 7
    assert await own_keys(redis, keys) == [keys.registrator_session("cam7"), keys.registrator_session("cam9")]
    assert_restored(await state.load_source("cam7"), await state.load_source("cam9"))
    assert await state.upgrade_layout(WINDOW) == 0  # once


async def test_replicas_upgrading_at_once_upgrade_once(redis: Redis, make_settings: MakeSettings) -> None:
    """Two replicas starting together: one moves the keys, the other finds nothing left (the transaction WATCHes what
    it read), so neither writes an old copy over what the other wrote since."""
    settings = make_settings(RegistratorSettings)
    keys = RedisKeys(settings)
    await write_old_layout(redis, keys)
    other = redis_client(settings)
    try:
        moved = await asyncio.gather(
            RegistratorState(redis, keys).upgrade_layout(WINDOW), RegistratorState(other, keys).upgrade_layout(WINDOW)
        )
    finally:
        await other.aclose()
    assert sorted(moved) == [0, 7]
    state = RegistratorState(redis, keys)
    assert_restored(await state.load_source("cam7"), await state.load_source("cam9"))
