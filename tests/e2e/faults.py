"""A live fleet to inject faults into: every service a process, the sample video looped at its real rate.

`live_fleet` starts it and yields once frames flow; `LiveFleet.finish` ends the source the way a camera
going away does (SIGTERM to the reader: ENDED), so the router summarises and the registrator drains, and
the report then says exactly what was read, routed and answered.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import psutil

from fleet.run import Fleet, FleetOptions, FleetReport, run_fleet
from fleet.servers import LocalServers
from shared.contracts import Event, EventState
from shared.settings import VigilSettings
from shared.subjects import task_stream_name, worker_durable

SOURCE = "cam0"
EVENT_GAP = 2.0
# Settings of every run: frames at 5 fps (the sample's 10 fps, one in two), short events so a run has several,
# and tasks or frames given back after 5 s rather than 30 s when a worker or router dies with them.
SETTINGS = {
    "video_loop": "true",
    "video_realtime": "true",
    "video_skip_frames": "1",
    "max_event_duration": "10",
    "event_gap": str(EVENT_GAP),
    "ack_wait": "5",
    "frames_ack_wait": "5",
    "summary_timeout": "15",
    "status_interval": "1",
    "startup_timeout": "30",
}


@dataclass
class LiveFleet:
    fleet: Fleet
    servers: LocalServers
    stop: asyncio.Event
    task: asyncio.Task[FleetReport]
    prefix: str

    @property
    def published(self) -> int:
        return self.fleet.progress.frames["published"]

    def results(self, model: str) -> int:
        return self.fleet.progress.results[model]

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Seconds it took; fails the test with `what` after `timeout`, or at once if the fleet run ended."""
        started = time.monotonic()
        while not predicate():
            if self.task.done():
                raise AssertionError(f"the fleet run ended while waiting for {what}: {self.task.result()}")
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def flowing(self, timeout: float = 30.0) -> None:
        """New results from every model again: the fleet works, whatever happened before."""
        before = dict(self.fleet.progress.results)
        await self.until(
            lambda: all(self.fleet.progress.results[m] >= n + 5 for m, n in before.items()), timeout, "results to flow"
        )

    async def tasks_held(self, model: str) -> int:
        """Tasks of `model` delivered to a worker and not yet acked (JetStream's own count)."""
        settings = VigilSettings(_env_file=None, subject_prefix=self.prefix)  # type: ignore[call-arg]
        nc = await nats.connect(self.servers.servers.nats_url)
        try:
            info = await nc.jetstream().consumer_info(task_stream_name(settings, model), worker_durable(model))
            return info.num_ack_pending
        finally:
            await nc.close()

    async def frames_later(self, n: int, timeout: float = 60.0) -> None:
        target = self.published + n
        await self.until(lambda: self.published >= target, timeout, f"{n} more frames")

    async def metric(self, label: str, name_suffix: str) -> float:
        """The sum of a service's Prometheus samples whose name ends with `name_suffix`."""
        url = f"http://127.0.0.1:{self.fleet.proc(label).metrics_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if not line.startswith("#") and name.split("{")[0].endswith(name_suffix):
                total += float(value)
        return total

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for proc in self.fleet.procs:
            with suppress(psutil.NoSuchProcess):
                out[proc.name] = psutil.Process(proc.process.pid).memory_info().rss / 2**20
        return out

    def alive(self) -> dict[str, bool]:
        return {p.name: p.process.returncode is None for p in self.fleet.procs}

    async def finish(self, timeout: float = 150.0) -> FleetReport:
        self.fleet.proc("reader").process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


@asynccontextmanager
async def live_fleet(servers: LocalServers, data_dir: Path, prefix: str, *, detection: int = 1) -> AsyncIterator[LiveFleet]:
    stop = asyncio.Event()
    fleet = Fleet(echo=False)
    options = FleetOptions(data_dir, detection=detection, settings=SETTINGS | {"subject_prefix": prefix})
    task = asyncio.create_task(run_fleet(servers.servers, options, stop, fleet))
    live = LiveFleet(fleet, servers, stop, task, prefix)
    try:
        await live.until(lambda: live.published >= 10, 90, "the first frames")
        yield live
    finally:
        stop.set()
        with suppress(Exception):
            await asyncio.wait_for(task, 60)


def check_events(events: list[Event]) -> list[Event]:
    """People are in every frame of the sample, so a run's events must tile its stream time: one after the
    other, never overlapping (an event twice) and never leaving a gap longer than `event_gap` (one lost)."""
    person = sorted((e for e in events if e.source_id == SOURCE and e.label == "person"), key=lambda e: e.start)
    assert person, "no events"
    assert all(e.state is EventState.FINISHED for e in person), [(e.id, e.state.value, e.error) for e in person]
    for a, b in zip(person, person[1:], strict=False):
        assert b.start > a.end, f"{a.id} ({a.start}-{a.end} s) and {b.id} ({b.start}-{b.end} s) overlap"
        assert b.start - a.end <= EVENT_GAP + 0.5, f"a gap of {b.start - a.end:.1f} s after {a.id}: an event lost?"
    return person


def check_accounting(report: FleetReport) -> None:
    """Every frame read is published or counted as dropped; every task routed has its result."""
    status = report.sources[SOURCE]
    assert status.frames_read == status.frames_published + status.frames_dropped, status
    drained = report.drained[SOURCE]
    assert drained.frames_routed == status.frames_published, (drained, status)
    assert drained.results == drained.tasks, drained
