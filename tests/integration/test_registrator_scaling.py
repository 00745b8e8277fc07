"""Two registrator replicas on the real servers share the sources by lease (issue 17): each source is held by one
replica, every occurrence gives one event with its whole clip, and a killed replica's sources move to the other
within the lease's TTL + 2 s, with no event lost or doubled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nats.aio.subscription import Subscription
from redis.asyncio import Redis

from fleet.processes import service_process
from services.registrator.settings import RegistratorSettings
from services.registrator.state import RegistratorState
from shared.bus import Bus
from shared.contracts import DropPolicy, EventState, FrameRef, RoutingSummary, SourceDrained, SourceState, SourceStatus
from shared.keys import RedisKeys
from shared.subjects import frames_stream
from tests.integration.helpers import wait_until
from tests.integration.test_registrator import FRAMES, PERSON, events_of, result, store_frames
from tests.support.settings import MakeSettings

SOURCES = [f"cam{i}" for i in range(6)]
LEASE_TTL = 3.0


async def holders(redis: Redis, keys: RedisKeys) -> dict[str, str]:
    """Source -> the replica holding its lease now."""
    found = {}
    for source_id in SOURCES:
        raw = await redis.get(keys.lease("registrator", source_id))
        if raw is not None:
            found[source_id] = raw.decode().split(" ", 1)[0]
    return found


def of_source(ref: FrameRef, source_id: str) -> FrameRef:
    # Files read as fast as possible: their events close by stream time only, so the seconds a move takes (no
    # results meanwhile) do not close them as a dark camera's would.
    return ref.model_copy(update={"source_id": source_id, "policy": DropPolicy.WAIT})


async def publish_frames(bus: Bus, refs: list[FrameRef]) -> None:
    for source_id in SOURCES:
        for ref in refs:
            await bus.publish(bus.subjects.frames(source_id), of_source(ref, source_id))


async def publish_results(bus: Bus, refs: list[FrameRef]) -> None:
    for source_id in SOURCES:
        for ref in refs:
            await bus.publish(bus.subjects.results(source_id), result(of_source(ref, source_id), ref.seq in PERSON))


async def end_sources(bus: Bus) -> None:
    for source_id in SOURCES:
        status = SourceStatus(
            source_id=source_id,
            state=SourceState.ENDED,
            wall_time=time.time(),
            frames_read=FRAMES,
            frames_published=FRAMES,
            last_seq=FRAMES - 1,
        )
        await bus.publish(bus.subjects.source_status(source_id), status)
        summary = RoutingSummary(source_id=source_id, frames_routed=FRAMES, tasks={"ssd": FRAMES}, wall_time=time.time())
        await bus.publish(bus.subjects.routed(source_id), summary)


async def check_one_whole_event_per_source(env: dict[str, str], drained: dict[str, SourceDrained]) -> None:
    assert sorted(drained) == SOURCES
    assert all(done.results == {"ssd": FRAMES} for done in drained.values()), drained  # each result counted once
    events = await events_of(env)
    assert sorted(e.source_id for e in events) == SOURCES, events  # one event per occurrence: none lost, none twice
    for event in events:
        # An event per tracked object (the default): ByteTrack reports a track from its second sighting on.
        assert event.state is EventState.FINISHED and event.track_id is not None, event
        assert event.frames == len(PERSON) - 1 and (event.start, event.end) == (0.6, 3.0), event
        assert event.clip_frames == FRAMES, event  # the whole clip, pre- and post-roll included


async def prepare(
    bus: Bus, service_env: dict[str, str], make_settings: MakeSettings, repo_root: Path
) -> tuple[list[FrameRef], RedisKeys, dict[str, str], dict[str, Subscription]]:
    """Every source's frames published, the drains watched; the registrators' settings."""
    refs = await store_frames(service_env, repo_root)
    settings = make_settings(RegistratorSettings)
    await bus.ensure_stream(frames_stream(settings))
    subs = {s: await bus.nc.subscribe(bus.subjects.drained(s)) for s in SOURCES}  # type: ignore[union-attr]
    await publish_frames(bus, refs)
    env = service_env | {"pre_roll": "1", "post_roll": "1", "event_gap": "1", "lease_ttl": str(LEASE_TTL)}
    return refs, RedisKeys(settings), env, subs


@pytest.mark.timeout(240)
async def test_killed_replica_sources_move_within_the_lease_ttl(
    bus: Bus, redis: Redis, service_env: dict[str, str], make_settings: MakeSettings, repo_root: Path
) -> None:
    refs, keys, env, subs = await prepare(bus, service_env, make_settings, repo_root)
    async with (
        service_process("services.registrator", env | {"instance": "reg-a"}, name="reg-a") as a,
        service_process("services.registrator", env | {"instance": "reg-b"}, name="reg-b") as b,
    ):

        async def split() -> bool:
            held = await holders(redis, keys)
            return len(held) == len(SOURCES) and set(held.values()) == {"reg-a", "reg-b"}

        await wait_until(split, 60, "both replicas holding sources")
        await publish_results(bus, refs[:20])  # every source's event open, 15 frames in
        before = await holders(redis, keys)
        moved = sorted(s for s, replica in before.items() if replica == "reg-a")
        await wait_until(lambda: _open_events_counted(redis, keys, 5), 60, "the events open on both replicas")
        await a.kill()
        killed_at = time.monotonic()

        async def taken_over() -> bool:
            return all(replica == "reg-b" for replica in (await holders(redis, keys)).values())

        await wait_until(taken_over, 30, "reg-b holding every source")
        took = time.monotonic() - killed_at
        print(f"\n{len(moved)} source(s) of the killed replica moved in {took:.2f} s (lease TTL {LEASE_TTL:g} s)")
        assert took <= LEASE_TTL + 2.0, took
        await publish_results(bus, refs[20:])
        await end_sources(bus)
        drained = {s: SourceDrained.from_bytes((await sub.next_msg(timeout=90)).data) for s, sub in subs.items()}
        assert b.running, b.tail
    await check_one_whole_event_per_source(service_env, drained)


async def _open_events_counted(redis: Redis, keys: RedisKeys, frames: int) -> bool:
    state = RegistratorState(redis, keys)
    events = [event for source in SOURCES for event in (await state.load_source(source)).open_events]
    return len(events) == len(SOURCES) and all(e.frames >= frames for e in events)


@pytest.mark.timeout(240)
async def test_a_joining_replica_takes_its_share_and_events_stay_whole(
    bus: Bus, redis: Redis, service_env: dict[str, str], make_settings: MakeSettings, repo_root: Path
) -> None:
    refs, keys, env, subs = await prepare(bus, service_env, make_settings, repo_root)
    async with service_process("services.registrator", env | {"instance": "reg-a"}, name="reg-a", grace=20):

        async def all_held_by_a() -> bool:
            held = await holders(redis, keys)
            return len(held) == len(SOURCES) and set(held.values()) == {"reg-a"}

        await wait_until(all_held_by_a, 60, "reg-a holding every source")
        await publish_results(bus, refs[:20])
        await wait_until(lambda: _open_events_counted(redis, keys, 5), 60, "the events open")
        async with service_process("services.registrator", env | {"instance": "reg-b"}, name="reg-b", grace=20):

            async def rebalanced() -> bool:
                return set((await holders(redis, keys)).values()) == {"reg-a", "reg-b"}

            await wait_until(rebalanced, 60, "reg-b taking its share")
            await publish_results(bus, refs[20:])
            await end_sources(bus)
            drained = {s: SourceDrained.from_bytes((await sub.next_msg(timeout=90)).data) for s, sub in subs.items()}
    await check_one_whole_event_per_source(service_env, drained)
