"""The registrator, which consumes the most subjects, dead-letters floods of bad messages without keeping
any of them: its Python heap, traced, does not grow from one flood to the next."""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
from itertools import pairwise

import pytest

from fleet.clients import connect_nats
from fleet.servers import ServerSet
from services.registrator.service import RegistratorService
from services.registrator.settings import RegistratorSettings
from shared.bus import Bus
from shared.metrics import Metrics, counter_value
from shared.subjects import Subjects, frames_stream
from tests.integration.helpers import running, wait_for
from tests.support.garbage import garbage
from tests.support.settings import MakeSettings


@pytest.mark.timeout(180)
async def test_floods_of_bad_messages_are_dead_lettered_and_not_kept(servers: ServerSet, make_settings: MakeSettings) -> None:
    settings = make_settings(RegistratorSettings)
    owner = Bus(settings, "test", "test", Metrics("test"))  # the reader would own the frames stream
    await owner.connect()
    await owner.ensure_stream(frames_stream(settings))
    subjects = Subjects.from_settings(settings)
    targets = [subjects.frames("cam0"), subjects.source_status("cam0"), subjects.results("cam0"), subjects.routed("cam0")]
    nc = await connect_nats(servers.env())
    registrator = RegistratorService(settings)
    # pytest keeps every log record it captures: that would be the test's memory growing, not the service's.
    vigil_logs = logging.getLogger("vigil")
    vigil_logs.propagate = False
    vigil_logs.addHandler(quiet := logging.NullHandler())
    heap: list[int] = []

    def service_heap() -> int:
        return sum(stat.size for stat in tracemalloc.take_snapshot().statistics("filename"))

    def dead_lettered() -> float:
        return sum(counter_value(registrator.bus.dead_letters, subject=s) for s in targets)

    try:
        async with running(registrator):
            js = nc.jetstream()
            tracemalloc.start()
            for flood in range(1, 4):
                for subject in targets:
                    for i in range(300):
                        await js.publish(subject, garbage(i))
                await wait_for(lambda f=flood: dead_lettered() >= f * 1200, 60, "dead letters")
                await asyncio.sleep(0.5)
                gc.collect()
                heap.append(service_heap())
            tracemalloc.stop()
    finally:
        vigil_logs.propagate = True
        vigil_logs.removeHandler(quiet)
        await nc.close()
        await owner.close()
    assert dead_lettered() == 3 * 1200
    growth = [(b - a) / 1024 for a, b in pairwise(heap)]
    print(f"\ntraced heap growth per flood of 1,200 bad messages: {[round(g) for g in growth]} KiB")
    assert all(g < 512 for g in growth), growth  # a kept 64 KiB message per flood would show as megabytes
