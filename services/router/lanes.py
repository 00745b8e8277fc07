"""One lane per source: a source's messages are routed in order, and no source waits for another's.

The router fetches from one consumer shared by every source. Routed in fetch order, a file waiting for room
in a model's queue (WAIT) held every live camera's frames behind it (issue 15). Each lane is a task that
routes its source's messages as they come; what a blocked lane holds is bounded upstream, by the reader's
`frames_ahead` for files, so the consumer's window keeps room for the other sources.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# A lane whose source has been quiet this long ends; the next message starts a new one.
_IDLE_SECONDS = 30.0


class SourceLanes(Generic[T]):
    """Handles each source's items in order, one batch at a time (what has queued since the last batch)."""

    def __init__(self, handle: Callable[[list[T]], Awaitable[None]], spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._handle = handle
        self._spawn = spawn
        self._queues: dict[str, list[T]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._busy: dict[str, list[T]] = {}  # the batch a lane is routing now
        self._closing = False
        self._none_left = asyncio.Event()  # set while no lane runs

    def put(self, source_id: str, items: list[T]) -> None:
        if source_id not in self._queues:
            self._queues[source_id], self._wake[source_id], self._busy[source_id] = [], asyncio.Event(), []
            self._none_left.clear()
            self._spawn(self._lane(source_id))
        self._queues[source_id].extend(items)
        self._wake[source_id].set()

    def held(self) -> dict[str, int]:
        """Items per source, waiting or being routed."""
        return {s: len(q) + len(self._busy[s]) for s, q in self._queues.items() if q or self._busy[s]}

    def held_items(self) -> list[T]:
        return [item for s, q in self._queues.items() for item in (*self._busy[s], *q)]

    async def close(self, grace: float) -> None:
        """Let the lanes route what they hold, for up to `grace` seconds; what is left stays unacked, for
        the next router."""
        self._closing = True
        for wake in self._wake.values():
            wake.set()
        if self._queues:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_left.wait(), grace)

    async def _lane(self, source_id: str) -> None:
        queue, wake = self._queues[source_id], self._wake[source_id]
        try:
            while True:
                if not queue:
                    if self._closing:
                        return
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), _IDLE_SECONDS)
                    except TimeoutError:
                        if not queue:  # no await since the check: put() cannot have added to it meanwhile
                            return
                    continue
                batch = queue[:]
                queue.clear()
                self._busy[source_id] = batch
                await self._handle(batch)
                self._busy[source_id] = []
        finally:
            del self._queues[source_id], self._wake[source_id], self._busy[source_id]
            if not self._queues:
                self._none_left.set()
