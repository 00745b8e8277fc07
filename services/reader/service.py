"""Reader: decode a source, JPEG-encode, store in SeaweedFS with a TTL, publish frame references."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import cv2
import numpy as np

from services.reader.settings import ReaderSettings
from services.reader.sources import DecodedFrame, FrameSource, SourceError, open_source
from shared.contracts import DropPolicy, FrameRef, SourceState, SourceStatus
from shared.jpeg import encode_jpeg
from shared.lifecycle import Service, StartupError
from shared.queues import PolicyQueue
from shared.retry import retry_until
from shared.storage import SeaweedStorage
from shared.subjects import ROUTER_DURABLE, frames_stream, frames_stream_name

_BACKLOG_CHECK_EVERY = 8


def shrink_and_encode(image: np.ndarray, quality: int, max_width: int) -> tuple[bytes, int, int]:
    height, width = image.shape[:2]
    if max_width and width > max_width:
        height = round(height * max_width / width)
        width = max_width
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return encode_jpeg(image, quality), width, height


class ReaderService(Service[ReaderSettings]):
    name = "reader"

    def __init__(self, settings: ReaderSettings) -> None:
        super().__init__(settings)
        labels = ("source_id",)
        self.m_read = self.metrics.counter("frames_read", "frames taken from the source (after skipping)", labels)
        self.m_skipped = self.metrics.counter("frames_skipped", "frames skipped by video_skip_frames", labels)
        self.m_published = self.metrics.counter("frames_published", "frame references published", labels)
        self.m_dropped = self.metrics.counter("frames_dropped", "frames dropped, by reason", ("source_id", "reason"))
        self.m_stage = self.metrics.histogram("stage", "time per frame in each stage", ("stage",))
        self.counts = {"read": 0, "published": 0, "dropped": 0, "skipped": 0}
        self.last_seq = -1
        self.error: str | None = None
        self.storage: SeaweedStorage | None = None
        self.stream_name = frames_stream_name(settings)

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        await self.bus.ensure_stream(frames_stream(self.settings))
        self.storage = await self.open_storage(stack, max_connections=self.settings.upload_concurrency)

    def health(self) -> dict[str, Any]:
        return super().health() | {"source_id": self.settings.source_id, "counts": self.counts, "error": self.error}

    # -- status ----------------------------------------------------------------------------------

    async def _publish_status(self, state: SourceState) -> None:
        status = SourceStatus(
            source_id=self.settings.source_id,
            state=state,
            wall_time=time.time(),
            frames_read=self.counts["read"],
            frames_published=self.counts["published"],
            frames_dropped=self.counts["dropped"],
            last_seq=self.last_seq,
            error=self.error,
        )
        await self.bus.publish(self.bus.subjects.source_status(self.settings.source_id), status)

    def _drop(self, reason: str) -> None:
        self.counts["dropped"] += 1
        self.m_dropped.labels(source_id=self.settings.source_id, reason=reason).inc()

    # -- pipeline --------------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        try:
            source = await asyncio.to_thread(open_source, s.video_source, s.reader_type, s.stream_index)
        except SourceError as exc:
            self.error = str(exc)
            await self._publish_status(SourceState.FAILED)
            raise StartupError(str(exc)) from None
        policy = DropPolicy.DROP_OLDEST if (source.is_live or s.video_realtime) else DropPolicy.WAIT
        self.log.info(
            "reading %s source at %.2f fps with %s, policy %s",
            "live" if source.is_live else "file", source.fps, s.reader_type, policy.value,
            extra={"source_id": s.source_id},
        )
        await self._publish_status(SourceState.STARTED)
        raw: PolicyQueue[DecodedFrame | None] = PolicyQueue(2 * s.upload_concurrency, policy, lambda _f: self._drop("behind"))
        inflight: asyncio.Queue[asyncio.Task[FrameRef | None] | None] = asyncio.Queue(s.upload_concurrency)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._decode(source, raw, policy))
                tg.create_task(self._encode_and_upload(raw, inflight, policy))
                tg.create_task(self._publish(inflight, policy))
        finally:
            await asyncio.to_thread(source.close)
        state = SourceState.FAILED if self.error else SourceState.ENDED
        self.exit_code = 1 if self.error else 0
        await self._publish_status(state)
        self.log.info(
            "source %s: read %d, published %d, dropped %d, skipped %d%s",
            state.value, self.counts["read"], self.counts["published"], self.counts["dropped"],
            self.counts["skipped"], f" ({self.error})" if self.error else "", extra={"source_id": s.source_id},
        )

    async def _decode(self, source: FrameSource, raw: PolicyQueue[DecodedFrame | None], policy: DropPolicy) -> None:
        s = self.settings
        frames = source.frames()
        started = time.monotonic()
        pace = policy is DropPolicy.DROP_OLDEST and not source.is_live
        try:
            while not self.stop_event.is_set():
                t0 = time.perf_counter()
                try:
                    frame = await asyncio.to_thread(next, frames, None)
                except SourceError as exc:
                    self.error = str(exc)
                    self.log.error("%s", exc, extra={"source_id": s.source_id})
                    break
                if frame is None:
                    break
                if frame.index % (s.video_skip_frames + 1):
                    self.counts["skipped"] += 1
                    self.m_skipped.labels(source_id=s.source_id).inc()
                    continue
                self.m_stage.labels(stage="decode").observe(time.perf_counter() - t0)
                if pace:
                    await asyncio.sleep(max(0.0, started + frame.pts - time.monotonic()))
                self.counts["read"] += 1
                self.m_read.labels(source_id=s.source_id).inc()
                await raw.put(frame)
        finally:
            await raw.put_wait(None)

    async def _encode_and_upload(
        self,
        raw: PolicyQueue[DecodedFrame | None],
        inflight: asyncio.Queue[asyncio.Task[FrameRef | None] | None],
        policy: DropPolicy,
    ) -> None:
        while (frame := await raw.get()) is not None:
            # Bounded by `inflight`: at most upload_concurrency frames encode/upload at once.
            await inflight.put(asyncio.create_task(self._store(frame, policy)))
        await inflight.put(None)

    async def _store(self, frame: DecodedFrame, policy: DropPolicy) -> FrameRef | None:
        s = self.settings
        assert self.storage is not None
        wall = time.time()
        t0 = time.perf_counter()
        data, width, height = await asyncio.to_thread(shrink_and_encode, frame.image, s.jpeg_quality, s.max_width)
        t1 = time.perf_counter()
        self.m_stage.labels(stage="encode").observe(t1 - t0)
        storage = self.storage

        async def upload() -> str:
            return await storage.upload(data, ttl=s.ttl_bucket, name=f"{s.source_id}-{frame.index}.jpg")

        # A file waits for storage to come back (nothing lost); a live source drops the frame instead.
        timeout = s.startup_timeout if policy is DropPolicy.WAIT else 1.0
        try:
            url = await retry_until("SeaweedFS upload", upload, timeout=timeout, log=self.log)
        except Exception as exc:  # noqa: BLE001 - counted and logged; the source goes on
            self.log.warning("frame %d not stored: %r", frame.index, exc, extra={"source_id": s.source_id})
            self._drop("upload_failed")
            return None
        self.m_stage.labels(stage="upload").observe(time.perf_counter() - t1)
        return FrameRef(
            source_id=s.source_id, seq=frame.index, pts=frame.pts, wall_time=wall,
            url=url, width=width, height=height, policy=policy,
        )

    async def _publish(self, inflight: asyncio.Queue[asyncio.Task[FrameRef | None] | None], policy: DropPolicy) -> None:
        s = self.settings
        subject = self.bus.subjects.frames
        while (task := await inflight.get()) is not None:
            ref = await task
            if ref is None:
                continue
            if policy is DropPolicy.WAIT and self.counts["published"] % _BACKLOG_CHECK_EVERY == 0:
                await self._wait_for_router()
            await self.bus.publish(subject, ref)
            self.counts["published"] += 1
            self.last_seq = ref.seq
            self.m_published.labels(source_id=s.source_id).inc()

    async def _wait_for_router(self) -> None:
        """Backpressure for files: keep at most `frames_ahead` references waiting for the router."""
        while await self.bus.backlog(self.stream_name, ROUTER_DURABLE) > self.settings.frames_ahead:
            await asyncio.sleep(0.05)
