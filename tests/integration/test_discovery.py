import asyncio
import time

from redis.asyncio import Redis

from shared.contracts import Heartbeat, ModelKind
from shared.discovery import HeartbeatPublisher, live_instances
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from tests.support.settings import MakeSettings


async def test_each_instance_has_its_own_key_that_expires(redis: Redis, make_settings: MakeSettings) -> None:
    settings = make_settings(VigilSettings)
    keys = RedisKeys(settings)

    def beat(instance: str) -> HeartbeatPublisher:
        hb = Heartbeat.idle("ssd", ModelKind.DETECTION, "DetectionInference", instance)
        return HeartbeatPublisher(redis, keys, 2, lambda: hb)

    a, b = beat("a"), beat("b")
    stop = asyncio.Event()
    runner = asyncio.create_task(a.run(stop))  # refreshed every ttl/3: stays
    # a's first beat is in before b's, so b's TTL runs from a known moment (on a loaded machine a's may be slow).
    deadline = time.monotonic() + 5
    while not (await live_instances(redis, keys)).get("ssd") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await b.publish_once()  # never refreshed: gone after the TTL
    live = await live_instances(redis, keys)
    assert sorted(h.instance for h in live["ssd"]) == ["a", "b"]
    deadline = time.monotonic() + 30
    while len((live := await live_instances(redis, keys)).get("ssd", [])) != 1:  # b's key expires after its TTL (2 s)
        assert time.monotonic() < deadline, f"b's heartbeat never expired: {live}"
        await asyncio.sleep(0.1)
    assert [h.instance for h in live["ssd"]] == ["a"]  # a, refreshed, outlived it
    stop.set()
    await runner
    await a.remove()
    assert await live_instances(redis, keys) == {}
