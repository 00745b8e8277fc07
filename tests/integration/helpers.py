"""Running services in the test's event loop, against the real servers (as processes: fleet/processes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
