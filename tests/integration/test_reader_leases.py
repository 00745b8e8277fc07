"""Two reader replicas on the real servers share the same sources by lease (issue 17): each source is read by one
replica at a time (its frames carry one run id at a time), and a killed replica's sources resume on the other within
the lease's TTL + 2 s."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from redis.asyncio import Redis

from fleet.processes import service_process
from services.reader.service import ROLE, ReaderService
from services.reader.settings import ReaderSettings
from shared.bus import Bus
from shared.contracts import FrameRef, SourceState
from shared.keys import RedisKeys
from shared.leases import assign
from tests.integration.helpers import wait_for, wait_until
from tests.integration.test_reader import read_stream
from tests.support.settings import MakeSettings, settings_from

REPLICAS = ["reader-a", "reader-b"]
LEASE_TTL = 3.0


def sources_split_between_replicas(per_replica: int) -> list[str]:
    """Sources the assignment gives `per_replica` to each replica (as it does any multiple of the replicas), so that
    both read and one kill moves."""
    sources = [f"cam{i}" for i in range(per_replica * len(REPLICAS))]
    assert sorted(Counter(assign(sources, REPLICAS).values()).values()) == [per_replica] * len(REPLICAS)
    return sources


class FrameLog:
    """Every frame reference published, by source, in arrival order: (arrival time, run id)."""

    def __init__(self) -> None:
        self.frames: dict[str, list[tuple[float, str]]] = {}

    async def on_msg(self, msg: Msg) -> None:
        ref = FrameRef.from_bytes(msg.data)
        self.frames.setdefault(ref.source_id, []).append((time.monotonic(), ref.run))

    def runs(self, source_id: str) -> list[str]:
        """The source's runs in the order their frames came, each once per block of frames."""
        blocks: list[str] = []
        for _, run in self.frames.get(source_id, []):
            if not blocks or blocks[-1] != run:
                blocks.append(run)
        return blocks

    def first_frame_of_a_run_after(self, source_id: str, runs: set[str], after: float) -> float | None:
        return next((t for t, run in self.frames.get(source_id, []) if t > after and run not in runs), None)


async def holders(redis: Redis, keys: RedisKeys, sources: list[str]) -> dict[str, str]:
    """Source -> the replica holding its lease now."""
    found = {}
    for source_id in sources:
        raw = await redis.get(keys.lease(ROLE, source_id))
        if isinstance(raw, bytes):
            found[source_id] = raw.decode().split(" ", 1)[0]
    return found


@pytest.mark.timeout(240)
async def test_each_source_is_read_by_one_replica_and_a_killed_ones_move_within_the_ttl(
    bus: Bus, redis: Redis, service_env: dict[str, str], make_settings: MakeSettings, repo_root: Path
) -> None:
    sources = sources_split_between_replicas(2)
    # Looped files paced like cameras: they never end, so only a kill or a move stops their runs.
    config = [
        {
            "source_id": s,
            "url": str(repo_root / "video" / "vtest.mp4"),
            "loop": True,
            "realtime": True,
            "target_fps": 4,
            "max_width": 320,
        }
        for s in sources
    ]
    env = service_env | {"sources": json.dumps(config), "lease_ttl": str(LEASE_TTL), "status_interval": "1"}
    keys = RedisKeys(make_settings(ReaderSettings))
    log = FrameLog()
    assert bus.nc is not None
    sub = await bus.nc.subscribe(bus.subjects.frames_all, cb=log.on_msg)
    try:
        async with (
            service_process("services.reader", env | {"instance": "reader-a"}, name="reader-a") as a,
            service_process("services.reader", env | {"instance": "reader-b"}, name="reader-b", grace=10) as b,
        ):

            async def split() -> bool:
                held = await holders(redis, keys, sources)
                return held == assign(sources, REPLICAS)

            await wait_until(split, 60, "each replica holding its share")
            steady = time.monotonic()
            await wait_for(
                lambda: all(any(t > steady for t, _ in log.frames.get(s, [])) for s in sources), 30, "frames of every source"
            )
            of_a = sorted(s for s, owner in assign(sources, REPLICAS).items() if owner == "reader-a")
            runs_before = {s: set(log.runs(s)) for s in sources}
            await a.kill()
            killed_at = time.monotonic()

            await wait_for(
                lambda: all(log.first_frame_of_a_run_after(s, runs_before[s], killed_at) for s in of_a),
                30,
                "the killed replica's sources read again by the other",
            )
            resumed = max(log.first_frame_of_a_run_after(s, runs_before[s], killed_at) or 0.0 for s in of_a)
            took = resumed - killed_at
            print(f"\n{len(of_a)} source(s) of the killed reader resumed in {took:.2f} s (lease TTL {LEASE_TTL:g} s)")
            assert took <= LEASE_TTL + 2.0, took
            assert await holders(redis, keys, sources) == dict.fromkeys(sources, "reader-b")
            assert b.running, b.tail
    finally:
        await sub.unsubscribe()

    for source_id in sources:
        runs = log.runs(source_id)
        # One run at a time: a run's frames come in one block, never interleaved with another run's.
        assert len(runs) == len(set(runs)), (source_id, runs)
        if source_id in of_a:
            assert len(runs) >= 2, (source_id, runs)  # the killed replica's run, then the survivor's


@pytest.mark.timeout(120)
async def test_replicas_read_each_file_once_and_all_exit_when_every_file_is_done(
    service_env: dict[str, str], repo_root: Path
) -> None:
    sources = sources_split_between_replicas(1)
    config = [{"source_id": s, "url": str(repo_root / "video" / "vtest.mp4"), "skip_frames": 39} for s in sources]
    replicas = [ReaderService(settings_from(ReaderSettings, service_env | {"sources": config, "instance": r})) for r in REPLICAS]
    await asyncio.wait_for(asyncio.gather(*(r.execute() for r in replicas)), 90)
    assert [r.exit_code for r in replicas] == [0, 0]
    frames, statuses = await read_stream(replicas[0])
    runs = {(f.source_id, f.run) for f in frames}
    assert sorted(s for s, _ in runs) == sources  # one run per file: read by one replica, once
    assert sorted(f.source_id for f in frames) == sorted(sources * 20)  # 795 frames, every 40th
    ended = sorted(s.source_id for s in statuses if s.state is SourceState.ENDED)
    assert ended == sources
