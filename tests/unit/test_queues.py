import asyncio

from services.reader.queues import PolicyQueue
from shared.contracts import DropPolicy


async def test_drop_oldest_keeps_the_newest_and_counts_drops() -> None:
    dropped: list[int] = []
    q: PolicyQueue[int] = PolicyQueue(3, DropPolicy.DROP_OLDEST, dropped.append)
    for i in range(5):
        await q.put(i)
    assert dropped == [0, 1]
    assert [await q.get() for _ in range(3)] == [2, 3, 4]


async def test_wait_holds_the_producer_and_loses_nothing() -> None:
    q: PolicyQueue[int] = PolicyQueue(2, DropPolicy.WAIT)
    await q.put(0)
    await q.put(1)
    blocked = asyncio.create_task(q.put(2))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert await q.get() == 0
    await asyncio.wait_for(blocked, 1)
    assert [await q.get(), await q.get()] == [1, 2]
