"""BacklogGate: how often it asks NATS, and what it lets through (a reading's estimate only over-counts)."""

from __future__ import annotations

import asyncio

import pytest

from shared import backlog
from shared.backlog import BacklogGate


class CountingBus:
    """bus.backlog's surface: a settable answer, and how many times it was asked."""

    def __init__(self, backlog: int | None) -> None:
        self.answer = backlog
        self.reads = 0
        self.asked = asyncio.Event()  # set at every reading

    async def backlog(self, stream: str, durable: str) -> int | None:
        self.reads += 1
        self.asked.set()
        return self.answer


def gate(bus: CountingBus, limit: int = 4, fresh_for: float = 60.0, poll: float = 0.01) -> BacklogGate:
    return BacklogGate(bus, "S", "d", limit, fresh_for, poll=poll)  # type: ignore[arg-type]


async def test_one_reading_lets_through_what_it_leaves_room_for_then_reads_again() -> None:
    bus = CountingBus(1)
    g = gate(bus)
    for _ in range(3):  # 1 queued of 4: room for 3 on one reading
        assert not await g.wait_open(lambda: False)
    assert bus.reads == 1
    bus.answer = 0  # the consumer caught up meanwhile: the next one is read again and passes at once
    assert not await g.wait_open(lambda: False)
    assert bus.reads == 2


async def test_a_full_gate_waits_reading_every_poll_until_there_is_room() -> None:
    bus = CountingBus(4)
    g = gate(bus)
    waiting = asyncio.create_task(g.wait_open(lambda: False))
    while bus.reads < 3:
        bus.asked.clear()
        await asyncio.wait_for(bus.asked.wait(), 5)
    assert not waiting.done()
    bus.answer = 2
    assert await asyncio.wait_for(waiting, 5) is True  # it waited, and is open now


class Clock:
    """shared.backlog's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_stale_reading_is_read_again_even_with_room(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(backlog.time, "monotonic", clock)
    bus = CountingBus(0)
    g = gate(bus, fresh_for=0.5)
    await g.wait_open(lambda: False)
    clock.now += 0.4
    await g.wait_open(lambda: False)
    assert bus.reads == 1
    clock.now += 0.2  # another producer may have filled the queue since: ask
    await g.wait_open(lambda: False)
    assert bus.reads == 2


async def test_admits_sheds_while_full_and_counts_what_it_admits(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(backlog.time, "monotonic", clock)
    bus = CountingBus(1)
    g = gate(bus, limit=8)
    admits = lambda: g.admits(3, fresh_for=60.0, full_for=0.02)  # noqa: E731 - the one call this test repeats
    assert [await admits() for _ in range(3)] == [True, True, False]  # 1 queued, room for 2
    assert bus.reads == 1  # full within full_for: not asked again
    clock.now += 0.03
    bus.answer = 0  # answered meanwhile: a full reading past full_for is read again
    assert await admits()
    assert bus.reads == 2
    clock.now += 61
    bus.answer = None  # NATS cannot say: admitted, the publish that follows finds out
    assert await admits()
