"""An event's proofs from SeaweedFS, the recent ones kept in memory: a browser seeking in a clip asks for
many small ranges of the same file, and each would otherwise download it whole."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from shared.storage import SeaweedStorage


class ProofCache:
    def __init__(self, storage: SeaweedStorage, max_bytes: int) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._loading: dict[str, asyncio.Task[bytes]] = {}

    async def get(self, url: str) -> bytes:
        """The file at `url` (only URLs taken from an event record reach here; storage checks the host too)."""
        data = self._held.get(url)
        if data is not None:
            self._held.move_to_end(url)
            return data
        # Concurrent requests for one clip (the browser opens several) share one download.
        task = self._loading.get(url)
        if task is None:
            task = asyncio.ensure_future(self.storage.download(url))
            self._loading[url] = task
            task.add_done_callback(lambda _: self._loading.pop(url, None))
        data = await asyncio.shield(task)
        self._keep(url, data)
        return data

    def _keep(self, url: str, data: bytes) -> None:
        if url in self._held or len(data) > self.max_bytes:
            return
        self._held[url] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, old = self._held.popitem(last=False)
            self._size -= len(old)
