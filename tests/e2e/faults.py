"""A live fleet to inject faults into: every service a process, the sample video looped at its real rate.

`live_fleet` starts it and yields once frames flow; `LiveFleet.finish` ends the source the way a camera
going away does (SIGTERM to the reader: ENDED), so the router summarises and the registrator drains, and
the report then says exactly what was read, routed and answered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nats
import psutil

from fleet.clients import connect_nats, redis_client
from fleet.run import ROOT, Fleet, FleetOptions, FleetReport, run_fleet
from fleet.servers import LocalServers
from shared.contracts import ContractError, Event, EventState, InferenceResult, SourceState
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from shared.subjects import Subjects, results_stream_name, task_stream_name, worker_durable
from tests.integration.helpers import wait_for
from tests.support.media import first_seconds
from tests.support.settings import settings_from

SOURCE = "cam0"
T = TypeVar("T")
# Settings of every run: frames at 5 fps (the sample's 10 fps, one in two), short events so a run has several,
# and tasks or frames given back after 5 s rather than 30 s when a worker or router dies with them.
SETTINGS = {
    "video_loop": "true",
    "video_realtime": "true",
    "video_skip_frames": "1",
    "max_event_duration": "10",
    "ack_wait": "5",
    "frames_ack_wait": "5",
    "summary_timeout": "15",
    "status_interval": "1",
    "startup_timeout": "30",
    # check_events proves nothing lost and nothing twice as "every frame with a person lies in exactly one event":
    # the scene events' definition. Object events across a killed or moved registrator are proven in
    # tests/integration/test_registrator_scaling.py, and their tracker's restore in tests/unit/test_objects.py.
    "event_mode": "scene",
    # Every frame becomes a task: the suite runs two at a time on CI's 2 cores, where the router would shed live frames
    # (as it should), and a result that comes after its neighbours were shed can fall outside every event. Shedding
    # is proven in tests/integration/test_work_queue.py and tests/unit/test_router_decisions.py.
    "live_backlog_seconds": "0",
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

    async def until_async(
        self, read: Callable[[], Awaitable[T]], predicate: Callable[[T], bool], timeout: float, what: str
    ) -> float:
        """`until` for a condition on something read anew each time (Redis, an endpoint)."""
        started = time.monotonic()
        value = await read()
        while not predicate(value):
            if self.task.done():
                raise AssertionError(f"the fleet run ended while waiting for {what}: {self.task.result()}")
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.5)
            value = await read()
        return time.monotonic() - started

    def _url(self, label: str, path: str) -> str:
        return f"http://127.0.0.1:{self.fleet.proc(label).metrics_port}{path}"

    async def health(self, label: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self._url(label, "/healthz")) as resp:
            return dict(await resp.json())

    async def health_or_none(self, label: str) -> dict[str, Any] | None:
        """/healthz, or None while the service does not answer yet (just started)."""
        try:
            return await self.health(label)
        except aiohttp.ClientConnectionError:
            return None

    async def flowing(self, timeout: float = 30.0) -> None:
        """New results from every model again: the fleet works, whatever happened before."""
        before = dict(self.fleet.progress.results)
        await self.until(
            lambda: all(self.fleet.progress.results[m] >= n + 5 for m, n in before.items()), timeout, "results to flow"
        )

    @property
    def settings(self) -> VigilSettings:
        return settings_from(VigilSettings, subject_prefix=self.prefix)

    async def stored_results(self, model: str) -> list[InferenceResult]:
        """Every result of `model` the RESULTS stream holds (on disk: what the registrator was given)."""
        settings = self.settings
        nc = await connect_nats(self.servers.servers.env())
        found: list[InferenceResult] = []
        try:
            js = nc.jetstream()
            sub = await js.subscribe(
                Subjects.from_settings(settings).results_all, stream=results_stream_name(settings), ordered_consumer=True
            )
            last = (await js.stream_info(results_stream_name(settings))).state.last_seq  # what is there now
            while last:
                try:
                    msg = await sub.next_msg(timeout=3)
                except nats.errors.TimeoutError:  # the last ones were routing summaries, which this skips
                    break
                try:
                    result = InferenceResult.from_bytes(msg.data)
                except ContractError:
                    result = None
                if result is not None and result.model == model:
                    found.append(result)
                if msg.metadata.sequence.stream >= last:
                    break
        finally:
            await nc.close()
        return found

    async def events(self) -> list[Event]:
        """The event records in Redis now."""
        redis = redis_client(self.servers.servers.env())
        try:
            return await EventStore(redis, RedisKeys(self.settings)).all()
        finally:
            await redis.aclose()

    async def tasks_held(self, model: str) -> int:
        """Tasks of `model` delivered to a worker and not yet acked (JetStream's own count)."""
        settings = self.settings
        nc = await connect_nats(self.servers.servers.env())
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
        async with aiohttp.ClientSession() as http, http.get(self._url(label, "/metrics")) as resp:
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

    async def rss_floor_mb(self, seconds: float = 2.5) -> dict[str, float]:
        """Each service's lowest RSS over a few seconds: what it keeps, without the passing peaks of work in
        hand (a clip being encoded holds tens of MB for a moment)."""
        floor: dict[str, float] = {}
        for _ in range(int(seconds / 0.2)):
            for name, mb in self.rss_mb().items():
                floor[name] = min(mb, floor.get(name, mb))
            await asyncio.sleep(0.2)
        return floor

    def alive(self) -> dict[str, bool]:
        return {p.name: p.process.returncode is None for p in self.fleet.procs}

    async def finish(self, timeout: float = 150.0) -> FleetReport:
        self.fleet.proc("reader").process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


@asynccontextmanager
async def live_fleet(servers: LocalServers, data_dir: Path, prefix: str, *, detection: int = 1) -> AsyncIterator[LiveFleet]:
    stop = asyncio.Event()
    fleet = Fleet()  # the services' logs go to stdout: pytest shows them with a failure
    options = FleetOptions(data_dir, detection=detection, settings=SETTINGS | {"subject_prefix": prefix})
    task = asyncio.create_task(run_fleet(servers, options, stop, fleet))
    live = LiveFleet(fleet, servers, stop, task, prefix)
    try:
        await live.until(lambda: live.published >= 10, 90, "the first frames")
        yield live
    finally:
        stop.set()
        with suppress(Exception):
            await asyncio.wait_for(task, 60)


def check_events(
    events: list[Event], results: list[InferenceResult], min_score: float = 0.5, run: str | None = None
) -> list[Event]:
    """No event twice: the source's person events never overlap. No event lost: every frame in which the
    detector saw a person is inside an event. And every event ended FINISHED, with its proofs. With `run`, of that
    reader run only (each run's stream time starts at 0)."""
    if run is not None:
        events = [e for e in events if e.run == run]
        results = [r for r in results if r.frame.run == run]
    person = sorted((e for e in events if e.source_id == SOURCE and e.label == "person"), key=lambda e: e.start)
    assert person, "no events"
    assert all(e.state is EventState.FINISHED for e in person), [(e.id, e.state.value, e.error) for e in person]
    for a, b in pairwise(person):
        assert b.start > a.end, f"{a.id} ({a.start}-{a.end} s) and {b.id} ({b.start}-{b.end} s) overlap"
    seen = sorted({r.frame.pts for r in results if any(d.label == "person" and d.score >= min_score for d in r.detections)})
    assert seen, "the detector saw nobody"
    uncovered = [pts for pts in seen if not any(e.start <= pts <= e.end for e in person)]
    assert not uncovered, f"frames with a person in no event (an event lost?): {uncovered[:10]}"
    return person


def check_accounting(report: FleetReport) -> None:
    """Every frame read is published or counted as dropped; every task routed has its result."""
    status = report.sources[SOURCE]
    assert status.frames_read == status.frames_published + status.frames_dropped, status
    drained = report.drained[SOURCE]
    assert drained.frames_routed == status.frames_published, (drained, status)
    assert drained.results == drained.tasks, drained


def check_file_read_whole(report: FleetReport) -> None:
    """A fleet run on a file that a server fault did not hurt: no service crashed, the file was read to its end with
    nothing shed (a file waits), and every frame is accounted for."""
    status = report.sources[SOURCE]
    assert report.code == 0, report
    assert status.state is SourceState.ENDED and status.frames_dropped == 0, status
    check_accounting(report)


def sample_start(folder: Path, seconds: float = 40.0) -> Path:
    """The sample video's first `seconds` (200 frames, 100 taken at one in two): a fleet run with a server killed in
    it needs a file that lasts well past the kill (after 60 frames), not all 80 s of it, which doubled CI's time."""
    return first_seconds(ROOT / "video" / "vtest.mp4", folder / "sample-start.mp4", seconds)


def sigkill_server(servers: LocalServers, name: str) -> float:
    """SIGKILL one server process ("nats-2", "weed-volume-1"); returns when, on the monotonic clock."""
    pid = servers.pid(name)
    assert pid is not None, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


async def frames_published_beyond(fleet: Fleet, run: asyncio.Task[FleetReport], count: int, timeout: float, what: str) -> None:
    """Wait until the fleet has published more than `count` frames, while its run goes on."""
    await wait_for(lambda: run.done() or fleet.progress.frames["published"] > count, timeout, what)
    assert not run.done(), run.result()
