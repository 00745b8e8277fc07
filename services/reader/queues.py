"""A bounded queue with a named drop policy: each queue between the reader's stages is one of these."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from shared.contracts import DropPolicy

T = TypeVar("T")


class PolicyQueue(Generic[T]):
    """WAIT holds the producer back (files, nothing lost); DROP_OLDEST sheds the stalest item (live sources)."""

    def __init__(self, maxsize: int, policy: DropPolicy, on_drop: Callable[[T], None] | None = None) -> None:
        if maxsize <= 0:
            raise ValueError("a PolicyQueue must be bounded")
        self.policy = policy
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self._on_drop = on_drop or (lambda _item: None)

    async def put(self, item: T) -> None:
        if self.policy is DropPolicy.WAIT:
            await self._queue.put(item)
            return
        while self._queue.full():
            self._on_drop(self._queue.get_nowait())
        self._queue.put_nowait(item)

    async def put_wait(self, item: T) -> None:
        """Always wait: for control items (end of stream) that must never be shed."""
        await self._queue.put(item)

    async def get(self) -> T:
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()
