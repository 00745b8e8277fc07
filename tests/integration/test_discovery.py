import asyncio
import time

from fleet.clients import redis_client
from shared.contracts import Heartbeat, ModelKind
from shared.discovery import HeartbeatPublisher, live_instances
from shared.keys import RedisKeys
from shared.settings import VigilSettings


async def test_each_instance_has_its_own_key_that_expires(service_env: dict[str, str]) -> None:
    settings = VigilSettings(_env_file=None, **service_env)  # type: ignore[arg-type]
    keys = RedisKeys(settings)
    redis = redis_client(settings)

    def beat(instance: str) -> HeartbeatPublisher:
        hb = Heartbeat(
            model="ssd",
            kind=ModelKind.DETECTION,
            subject="DetectionInference",
            instance=instance,
            started_at=time.time(),
            processed=0,
            in_flight=0,
            fps=0,
        )
        return HeartbeatPublisher(redis, keys, 2, lambda: hb)

    try:
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
        await asyncio.sleep(2.5)
        assert [h.instance for h in (await live_instances(redis, keys))["ssd"]] == ["a"]
        stop.set()
        await runner
        await a.remove()
        assert await live_instances(redis, keys) == {}
    finally:
        await redis.aclose()
