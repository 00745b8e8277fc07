"""Running services in the test's event loop, against the real servers (as processes: fleet/processes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from shared.lifecycle import Service

S = TypeVar("S", bound=Service)  # type: ignore[type-arg]


@asynccontextmanager
async def running(service: S, ready: Callable[[S], bool] = lambda s: True, timeout: float = 30.0) -> AsyncIterator[S]:
    task = asyncio.create_task(service.execute())
    try:
        await wait_for(lambda: task.done() or ready(service), timeout, "service start")
        if task.done():
            task.result()  # raise its start-up error here
        yield service
    finally:
        service.stop_event.set()
        await asyncio.wait_for(task, 30)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    async def check() -> bool:
        return predicate()

    await wait_until(check, timeout, what)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll `check` (it may ask a server) until it holds; an AssertionError naming `what` after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def seconds_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """How long `predicate` took to hold (wait_for, timed)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_for(predicate, timeout, what)
    return loop.time() - started
