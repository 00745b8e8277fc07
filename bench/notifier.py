"""Notifier throughput: notices per second from the EVENTS stream to a webhook, to MQTT, and to both.

The notices (each the `new` of its own event, so that a batch goes out side by side) are published into the stream
first; then `python -m services.notifier` delivers them, to an aiohttp receiver in this process that checks each
signature, and to Debian's mosquitto with a subscriber in this process. Timed from the first delivery to the last.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from bench.common import median, print_table, write_result
from fleet.processes import start_service
from fleet.servers import LocalServers, ServerSet
from shared.bus import Bus, Outgoing
from shared.contracts import EventState
from shared.metrics import Metrics
from shared.notices import EventNotice, NoticeSubjects, NoticeType, events_stream
from shared.settings import VigilSettings
from tests.support.events import stored_event
from tests.support.mosquitto import Mosquitto, mosquitto_binary
from tests.support.webhook import Receiver

NOTICES = 3000
SECRET = b"bench-signing-key"


async def publish(servers: ServerSet) -> tuple[str, Bus]:
    prefix = f"b{secrets.token_hex(3)}"
    settings = VigilSettings.model_validate(servers.env() | {"subject_prefix": prefix})
    bus = Bus(settings, "bench", "bench", Metrics("bench"))
    await bus.connect()
    await bus.ensure_stream(events_stream(settings))
    subjects = NoticeSubjects.from_settings(settings)
    for start in range(0, NOTICES, 256):
        batch = [
            EventNotice(
                type=NoticeType.NEW,
                source_id="cam0",
                after=stored_event(f"cam0-{i}", 100.0 + i, state=EventState.CREATED, frames=1),
            )
            for i in range(start, min(NOTICES, start + 256))
        ]
        await bus.publish_many([Outgoing.of(subjects.event("cam0"), n) for n in batch])
    return prefix, bus


async def run_once(servers: ServerSet, folder: Path, webhook: bool, mqtt: Mosquitto | None) -> dict[str, Any]:
    prefix, bus = await publish(servers)
    secret = folder / "webhook.key"
    secret.write_bytes(SECRET)
    env = servers.env() | {"subject_prefix": prefix, "notify_batch": "256"}
    receiver = Receiver(SECRET)
    got_mqtt: list[float] = []
    watcher: asyncio.Task[None] | None = None
    if webhook:
        await receiver.start()
        env |= {"webhooks": f'[{{"url": "{receiver.url}"}}]', "webhook_secret_file": str(secret)}
    if mqtt is not None:
        env |= {"mqtt_host": "127.0.0.1", "mqtt_port": str(mqtt.port), "mqtt_topic_prefix": prefix}
        ready = asyncio.Event()

        async def watch() -> None:
            async with aiomqtt.Client("127.0.0.1", mqtt.port, identifier=f"bench-{prefix}") as client:
                await client.subscribe(f"{prefix}/events", qos=1)
                ready.set()
                async for _ in client.messages:
                    got_mqtt.append(time.perf_counter())

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(ready.wait(), 10)
    process = await start_service("services.notifier", env)
    first: float | None = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        counts = [len(receiver.requests)] if webhook else []
        counts += [len(got_mqtt)] if mqtt is not None else []
        if first is None and max(counts) > 0:
            first = time.perf_counter()
        if min(counts) >= NOTICES:
            break
        process.check_running()
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - (first or time.perf_counter())
    await process.stop()
    if watcher is not None:
        watcher.cancel()
    await receiver.stop()
    await bus.close()
    done = min([len(receiver.requests)] * webhook + [len(got_mqtt)] * (mqtt is not None))
    if done < NOTICES:
        raise RuntimeError(f"delivered {done} of {NOTICES}: {''.join(process.tail)}")
    assert all(r.signed for r in receiver.requests)
    return {"notices_per_s": NOTICES / seconds, "seconds": seconds}


async def main(repeats: int) -> None:
    binary = mosquitto_binary()
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        folder = Path(tmp)
        servers = LocalServers(folder / "servers")
        server_set = servers.start()
        broker = Mosquitto(binary, folder) if binary else None
        if broker is not None:
            await broker.start()
        runs: dict[str, list[dict[str, Any]]] = {"webhook": [], "mqtt": [], "both": []}
        try:
            for i in range(repeats):
                runs["webhook"].append(await run_once(server_set, folder, True, None))
                if broker is not None:
                    runs["mqtt"].append(await run_once(server_set, folder, False, broker))
                    runs["both"].append(await run_once(server_set, folder, True, broker))
                print(f"run {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]['notices_per_s']:.0f}/s" for k, v in runs.items() if v))
        finally:
            if broker is not None:
                broker.stop()
            servers.stop()
    if broker is None:
        print(f"no mosquitto ({shutil.which('mosquitto')}): MQTT not measured (scripts/install-test-deps.sh)")
    rows = [[name, median([r["notices_per_s"] for r in found])] for name, found in runs.items() if found]
    print_table(f"delivering {NOTICES} notices, medians of {repeats} runs", ["destinations", "notices/s"], rows)
    write_result("notifier", {"notices": NOTICES, "repeats": repeats, "runs": runs})


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
