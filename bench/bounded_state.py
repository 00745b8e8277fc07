"""Bounded state: the registrator's Redis use per source per hour of 10-fps results (its dedup state), and what
one page of the api's event listing costs (Redis commands and milliseconds) over 10k and 100k event records.

`python -m bench.bounded_state [records ...]` starts a bare redis-server of its own in a temporary folder.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis

from bench.common import print_table, write_result
from fleet.servers import find_binary
from services.api.queries import Cursor, EventFilter, FleetView
from services.registrator.settings import RegistratorSettings
from services.registrator.state import RegistratorState
from services.registrator.window import SeenWindow
from shared.contracts import Event, EventState
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.settings import VigilSettings

FPS, MODELS, HOUR = 10, ("ssd", "effnet"), 3600
SOURCES = 20
LABELS = (("person", 0.70), ("car", 0.25), ("dog", 0.05))
ZONES = (("drive", 0.40), ("gate", 0.02))  # the share of objects that enter each
SUB_LABELS = ("cab", "minivan", "pickup", "police van")  # a car's, from the cascade
STATIONARY = 0.05
PAGE = 50
WINDOW = RegistratorSettings.model_fields["dedup_window_frames"].default


@contextmanager
def redis_server() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def commands(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.endswith("_info"))


async def dedup_hour(redis: Redis, keys: RedisKeys) -> dict[str, Any]:
    """An hour of one 10-fps source with two models, absorbed in batches of 10 results as the service does."""
    state = RegistratorState(redis, keys)
    before = await used_memory(redis)
    feed = "cam0@r1"
    windows = {model: SeenWindow(WINDOW) for model in MODELS}
    for first in range(0, FPS * HOUR, 10):
        async with redis.pipeline(transaction=True) as pipe:
            for model, window in windows.items():
                for seq in range(first, first + 10):
                    window.add(seq)
                state.window(pipe, feed, model, window)
            await pipe.execute()
    grown = await used_memory(redis) - before
    own = f"{keys.registrator_session_prefix}*"  # every source session of the registrator
    per_key = [int(await redis.memory_usage(k) or 0) async for k in redis.scan_iter(match=own)]
    return {"used_memory_growth_kb": round(grown / 1024, 1), "keys": len(per_key), "keys_kb": round(sum(per_key) / 1024, 1)}


def synthetic(i: int, rng: random.Random, now: float) -> Event:
    label = rng.choices([lab for lab, _ in LABELS], [w for _, w in LABELS])[0]
    source = f"cam{rng.randrange(SOURCES)}"
    state = EventState.FINISHED if rng.random() < 0.97 else EventState.ERROR
    zones = [zone for zone, share in ZONES if rng.random() < share]
    sub_label = rng.choice(SUB_LABELS) if label == "car" else None
    stationary = rng.random() < STATIONARY
    start = now - i * 7.0  # one event every 7 s across the fleet
    return Event(
        id=f"{source}-{i:016x}",
        source_id=source,
        model="ssd",
        label=label,
        label_counts={label: 5},
        state=state,
        start=0.0,
        end=5.0,
        start_wall=start,
        frames=5,
        best_score=0.9,
        best_frame_seq=0,
        updated_at=start,
        zones=zones,
        sub_label=sub_label,
        stationary=stationary,
    )


async def fill(store: EventStore, count: int) -> None:
    rng, now = random.Random(1), time.time()
    for first in range(0, count, 1000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for i in range(first, min(first + 1000, count)):
                await store.save_in(pipe, synthetic(i, rng, now))
            await pipe.execute()
    # One record of a source seen only at the very start (the worst case of a scan that filters).
    await store.save(synthetic(count, rng, now).model_copy(update={"id": "rare-0", "source_id": "rare"}))


async def listing(redis: Redis, keys: RedisKeys, count: int) -> list[list[Any]]:
    store = EventStore(redis, keys)
    before = await used_memory(redis)
    await fill(store, count)
    per_event = (await used_memory(redis) - before) / (count + 1)
    view = FleetView(redis, keys)
    cases = {
        "no filter": EventFilter(),
        "source (5%)": EventFilter(source_id="cam3"),
        "label dog (5%)": EventFilter(label="dog"),
        "source+label+state": EventFilter(source_id="cam3", label="dog", state=EventState.FINISHED),
        "state ERROR (3%)": EventFilter(state=EventState.ERROR),
        "rare source (1 record, oldest)": EventFilter(source_id="rare"),
        "zone gate (2%)": EventFilter(zone="gate"),
        "sub_label cab (6%)": EventFilter(sub_label="cab"),
        "stationary (5%)": EventFilter(stationary=True),
        "zone drive+sub_label+moving": EventFilter(zone="drive", sub_label="police van", stationary=False),
    }
    rows = []
    for name, where in cases.items():
        calls, started = await commands(redis), time.perf_counter()
        page = await view.events(where, PAGE)
        first_ms = (time.perf_counter() - started) * 1000
        first_calls = await commands(redis) - calls  # INFO itself is not counted (its cmdstat is left out)
        second_ms, second_calls = float("nan"), 0
        if page.next_cursor is not None:
            cursor = Cursor.decode(page.next_cursor.encode())
            calls, started = await commands(redis), time.perf_counter()
            await view.events(where, PAGE, cursor)
            second_ms = (time.perf_counter() - started) * 1000
            second_calls = await commands(redis) - calls
        rows.append([count, name, len(page.events), first_calls, first_ms, second_calls, second_ms, round(per_event)])
    return rows


async def main(sizes: list[int]) -> None:
    with redis_server() as port:
        settings = VigilSettings(_env_file=None, redis_host="127.0.0.1", redis_port=port, subject_prefix="bench")  # type: ignore[call-arg]
        redis = Redis(host="127.0.0.1", port=port)
        keys = RedisKeys(settings)
        try:
            dedup = await dedup_hour(redis, keys)
            await redis.flushall()
            rows: list[list[Any]] = []
            for size in sizes:
                rows += await listing(redis, keys, size)
                await redis.flushall()
        finally:
            await redis.aclose()
    print_table(
        f"registrator dedup state, one source at {FPS} fps with {len(MODELS)} models, one hour",
        ["used_memory growth (KB)", "keys", "MEMORY USAGE of its keys (KB)"],
        [[dedup["used_memory_growth_kb"], dedup["keys"], dedup["keys_kb"]]],
    )
    print_table(
        f"api listing, page of {PAGE}",
        ["records", "filter", "events", "cmds p1", "ms p1", "cmds p2", "ms p2", "Redis B/event"],
        rows,
    )
    write_result("bounded_state", {"dedup_per_source_hour": dedup, "listing": rows})


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [10_000, 100_000]))
