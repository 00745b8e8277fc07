"""The one stop-aware sleep (shared/pause.py), which every waiting loop of the fleet uses."""

import asyncio

from shared.pause import sleep_unless_stopped


async def test_a_stop_ends_a_long_sleep_at_once() -> None:
    stop = asyncio.Event()
    sleeper = asyncio.create_task(sleep_unless_stopped(stop, 3600))
    await asyncio.sleep(0)  # let it start waiting
    assert not sleeper.done()
    stop.set()
    assert await asyncio.wait_for(sleeper, 5) is True  # an hour's sleep would time out here


async def test_an_unstopped_sleep_runs_its_time_and_says_go_on() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await sleep_unless_stopped(stop, 0.05) is False
    assert loop.time() - started >= 0.05 * 0.9  # it slept: a loop around it does not spin


async def test_already_stopped_returns_without_waiting() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(sleep_unless_stopped(stop, 3600), 5) is True
