"""One backlog gate: how producers of files wait for room in a consumer's queue (the reader for the router, the
router for each model's workers), so that nothing is dropped and no queue grows without bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from shared.bus import Bus


class BacklogGate:
    """Open while a durable consumer has fewer than `limit` messages waiting or in flight.

    A reading serves for `fresh_for` seconds, counting what passes meanwhile (each reading is a round trip to NATS,
    and a batch of frames passes in far less); while the gate is shut it is read again at every poll. While NATS cannot say
    (restarting, away) the gate counts as shut: what waits could not be published anyway.
    """

    def __init__(self, bus: Bus, stream: str, durable: str, limit: int, fresh_for: float, poll: float = 0.02) -> None:
        self.bus, self.stream, self.durable = bus, stream, durable
        self.limit, self.fresh_for, self.poll = limit, fresh_for, poll
        self.last: int | None = None  # the last reading, for metrics
        self._estimate = 0  # the last reading plus what passed since
        self._fresh_until = 0.0

    async def read(self) -> int | None:
        self.last = await self.bus.backlog(self.stream, self.durable)
        self._estimate = self.limit if self.last is None else self.last
        self._fresh_until = time.monotonic() + self.fresh_for
        return self.last

    def _open(self) -> bool:
        return self._estimate < self.limit and time.monotonic() < self._fresh_until

    async def wait_open(self, give_up: Callable[[], bool], on_wait: Callable[[], None] = lambda: None) -> bool:
        """Until the gate lets one more through, or `give_up()`; calls `on_wait` once if it has to wait, and says
        whether it did."""
        waited = False
        while not give_up():
            if self._open() or (await self.read() is not None and self._open()):
                self._estimate += 1  # what passes counts as queued until the next reading says otherwise
                break
            if not waited:
                on_wait()
                waited = True
            await asyncio.sleep(self.poll)
        return waited
