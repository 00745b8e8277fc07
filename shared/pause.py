"""The one stop-aware sleep: a loop that waits between rounds waits here, so a stop ends the wait at once."""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, cut short when `stop` is set; True when it is set (the caller should wind up)."""
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
