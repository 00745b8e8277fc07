"""Faults injected into a live fleet of real processes on real servers: what is lost is asserted against
what was read (nothing, or drops the reader counted)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from fleet.servers import LocalServers
from tests.e2e.faults import check_accounting, check_events, live_fleet

pytestmark = pytest.mark.timeout(420)

SSD = "ssd_mobilenet_v2_coco"


async def test_killed_worker_router_and_registrator(local_servers: LocalServers, unique: str, tmp_path: Path) -> None:
    async with live_fleet(local_servers, tmp_path, unique, detection=2) as live:
        await live.frames_later(30)

        # kill -9 one of two detection workers while it holds tasks. Frozen, it answers nothing while the
        # other acks what it gets at once, so tasks still unacked after a moment are the frozen one's.
        victim = live.fleet.proc("detection-1").process
        for _ in range(20):
            os.kill(victim.pid, signal.SIGSTOP)
            await asyncio.sleep(0.7)
            held = await live.tasks_held(SSD)
            if held and await live.tasks_held(SSD) >= held:
                break
            os.kill(victim.pid, signal.SIGCONT)
            await asyncio.sleep(0.3)
        assert held, "detection-1 never held a task when frozen"
        await live.fleet.kill("detection-1")
        started = asyncio.get_running_loop().time()
        redelivered = 0.0
        while redelivered < held:
            assert asyncio.get_running_loop().time() - started < 40, f"detection-2 took over {redelivered} of {held} tasks"
            await asyncio.sleep(0.5)
            redelivered = await live.metric("detection-2", "tasks_redelivered_total")
        took = asyncio.get_running_loop().time() - started
        print(f"\ndetection-1 killed holding {held} task(s): detection-2 answered them {took:.1f} s later (ack_wait 5 s)")
        await live.frames_later(25)

        # kill -9 the router and the registrator, then start them again: they resume from their consumers.
        await live.fleet.kill("router")
        await live.fleet.kill("registrator")
        await asyncio.sleep(1)
        await live.fleet.restart("registrator")
        await live.fleet.restart("router")
        await live.flowing(60)
        await live.frames_later(40)
        report = await live.finish()
        results = await live.stored_results(SSD)

    assert report.code == 0, report
    check_accounting(report)
    events = check_events(report.events, results)
    drained = report.drained["cam0"]
    print(f"{drained.frames_routed} frames routed, tasks {drained.tasks}, every one answered; "
          f"{len(events)} events tiling {events[0].start:.1f}-{events[-1].end:.1f} s")


async def test_nats_redis_and_seaweedfs_go_away_and_come_back(local_servers: LocalServers, unique: str, tmp_path: Path) -> None:
    try:
        async with live_fleet(local_servers, tmp_path, unique) as live:
            await live.frames_later(25)
            results_before = len(await live.stored_results(SSD))

            # NATS restarts (same port, same JetStream store): every service reconnects by itself.
            await asyncio.to_thread(local_servers.stop_one, "nats")
            await asyncio.sleep(2)
            await asyncio.to_thread(local_servers.start_one, "nats")
            assert all(live.alive().values()), live.alive()
            await live.flowing(60)
            assert len(await live.stored_results(SSD)) >= results_before  # what was stored before survived
            print(f"\nNATS restarted: results flow again; {results_before} results stored before it are still there")

            # Redis restarts (append-only file): heartbeats and event records resume.
            await asyncio.to_thread(local_servers.stop_one, "redis")
            await asyncio.sleep(2)
            await asyncio.to_thread(local_servers.start_one, "redis")
            await live.flowing(60)
            await live.frames_later(15)
            print("Redis restarted: results flow again")

            # SeaweedFS away for 15 s: the reader drops frames it cannot store (counted), workers answer
            # frames they cannot fetch with error results, proofs being cut are retried.
            await asyncio.to_thread(local_servers.stop_one, "weed")
            await asyncio.sleep(15)
            await asyncio.to_thread(local_servers.start_one, "weed")
            await live.flowing(60)
            await live.frames_later(40)
            assert all(live.alive().values()), live.alive()
            report = await live.finish()
            results = await live.stored_results(SSD)
    finally:
        for name in ("nats", "redis", "weed"):  # the servers are shared with the other tests
            if not local_servers.running(name):
                local_servers.start_one(name)

    assert report.code == 0, report
    check_accounting(report)
    status = report.sources["cam0"]
    assert status.frames_dropped > 0  # the frames read while SeaweedFS was away, counted
    errors = [r for r in results if r.error]
    events = check_events(report.events, results)
    print(f"read {status.frames_read}, published {status.frames_published}, dropped {status.frames_dropped}; "
          f"{len(errors)} SSD error results; {len(events)} events, all FINISHED")
