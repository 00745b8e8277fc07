"""The router's real `run()` on tests/support/fake_bus.py, with its live models given and its routed counts kept in
memory (RoutedCounts keeps them in Redis, once per frame; tests/integration covers that)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

from services.router.counts import FrameCount
from services.router.service import RouterService
from services.router.settings import RouterSettings
from shared.contracts import Heartbeat, ModelKind
from shared.subjects import frames_stream_name
from tests.support.fake_bus import FakeBus
from tests.support.fake_redis import FakeRedis
from tests.support.settings import settings_from


class MemoryCounts:
    """RoutedCounts' surface in memory: each (feed, seq) counted once."""

    def __init__(self) -> None:
        self.counted: set[tuple[str, int]] = set()
        self.fields: dict[str, Counter[str]] = {}

    async def add(self, frames: list[FrameCount]) -> list[bool]:
        fresh = []
        for f in frames:
            new = (f.feed, f.seq) not in self.counted
            if new:
                self.counted.add((f.feed, f.seq))
                self.fields.setdefault(f.feed, Counter()).update(f.fields)
            fresh.append(new)
        return fresh

    async def read(self, feed: str) -> dict[str, int]:
        return dict(self.fields.get(feed, {}))

    async def forget(self, feed: str) -> None:
        self.fields.pop(feed, None)


def heartbeat(model: str, kind: ModelKind = ModelKind.DETECTION) -> Heartbeat:
    return Heartbeat.idle(model, kind, f"{model.capitalize()}Inference", "w")


@asynccontextmanager
async def offline_router(
    models: list[str], *, classifiers: Collection[str] = (), **settings: Any
) -> AsyncIterator[tuple[RouterService, FakeBus]]:
    """A router whose live models are `models` (detectors, but those named in `classifiers`)."""
    # The live view is given here and never re-read: its refresh (from Redis) is set an hour apart.
    router = RouterService(settings_from(RouterSettings, subject_prefix="unit", live_refresh_seconds=3600, **settings))
    bus = FakeBus(router.settings, "router")
    router.bus = bus  # type: ignore[assignment]
    router.redis = FakeRedis()  # type: ignore[assignment]  # held, not used: the counts below stand for it
    router.counts = MemoryCounts()  # type: ignore[assignment]
    router.frames_stream = frames_stream_name(router.settings)
    kinds = {model: ModelKind.CLASSIFICATION if model in classifiers else ModelKind.DETECTION for model in models}
    router.live = {model: heartbeat(model, kind) for model, kind in kinds.items()}
    task = asyncio.create_task(router.run())
    try:
        yield router, bus
    finally:
        router.stop_event.set()
        await asyncio.wait_for(task, 10)
