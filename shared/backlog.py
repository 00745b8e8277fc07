"""One backlog gate: how producers of files wait for room in a consumer's queue (the reader for the router, the
router for each model's workers), so that nothing is dropped and no queue grows without bound; and how the router
tells that a live frame would only join a queue too long to answer it in time (`admits`)."""

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
        self._read_at = float("-inf")  # when (monotonic) the last reading was taken

    async def read(self) -> int | None:
        self.last = await self.bus.backlog(self.stream, self.durable)
        self._estimate = self.limit if self.last is None else self.last
        self._read_at = time.monotonic()
        return self.last

    def _open(self) -> bool:
        return self._estimate < self.limit and time.monotonic() < self._read_at + self.fresh_for

    async def admits(self, limit: int, fresh_for: float, full_for: float) -> bool:
        """Without waiting: whether one more fits under `limit` (a live frame's), counting it in if so.

        The estimate only over-counts between readings (what passed may have been answered since), so a reading
        that leaves room serves for `fresh_for` seconds; one that is full is read again after `full_for` (about
        the time one task takes, after which one may have left). While NATS cannot say, yes: the publish that
        follows finds out, and gives the frame back."""
        now = time.monotonic()
        stale = (self._estimate >= limit and now >= self._read_at + full_for) or now >= self._read_at + fresh_for
        if stale and await self.read() is None:
            return True
        if self._estimate >= limit:
            return False
        self._estimate += 1
        return True

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
