"""Running services in the test's event loop, against the real servers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
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


@asynccontextmanager
async def service_process(
    module: str, env: dict[str, str], *args: str, log: Path | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m <module> *args` with these settings (and no .env), killed at the end if still running.
    Its output goes to `log` when given (to say why it failed), else nowhere."""
    with open(log or os.devnull, "wb") as out:  # noqa: ASYNC230 - opened once, before the process starts
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            "--env-file",
            os.devnull,
            cwd=Path(__file__).resolve().parents[2],
            env=os.environ | env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
