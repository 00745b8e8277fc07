"""One source, end to end: open, decode, select, encode, upload, publish; reconnect when it breaks.

A runner never raises: whatever happens to its source ends as a state (ENDED or FAILED) and a
clear last error, so one broken camera never takes the reader's other sources down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import cv2
from prometheus_client import Counter

from services.reader.queues import PolicyQueue
from services.reader.settings import ReaderSettings, SourceConfig
from services.reader.sources import DecodedFrame, FrameSource, SourceError, is_live, open_source
from shared.contracts import DropPolicy, FrameRef, HealthState, SourceHealth, SourceState
from shared.jpeg import encode_jpeg
from shared.metrics import Metrics
from shared.pause import sleep_unless_stopped
from shared.rate import StreamRate
from shared.retry import retry_until
from shared.storage import SeaweedStorage

Publish = Callable[[FrameRef], Awaitable[None]]
# A file that ends before this share of the frames its container declares was cut short.
_COMPLETE_FILE = 0.98
_FILE_BATCH = 4
# Encoding threads for every source of the process: about one per core. More only take turns on the GIL
# and the cores with the decoder and the event loop.
_ENCODERS = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="encode")


class Outcome(Enum):
    EOF = "eof"
    ERROR = "error"
    STALLED = "stalled"
    STOPPED = "stopped"


def shrink_and_encode(frame: DecodedFrame, quality: int, max_width: int) -> tuple[bytes, int, int]:
    image = frame.bgr()
    height, width = image.shape[:2]
    if max_width and width > max_width:
        height = round(height * max_width / width)
        width = max_width
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return encode_jpeg(image, quality), width, height


def take_batch(frames: Iterator[DecodedFrame], size: int) -> tuple[list[DecodedFrame], bool, SourceError | None]:
    """Up to `size` frames, whether the source ended, and the error that stopped it (after what decoded)."""
    batch: list[DecodedFrame] = []
    try:
        for _ in range(size):
            frame = next(frames, None)
            if frame is None:
                return batch, True, None
            batch.append(frame)
    except SourceError as exc:
        return batch, True, exc
    return batch, False, None


class FrameSelector:
    """Which decoded frames are taken: every (skip+1)-th, then at most target_fps by stream time."""

    def __init__(self, skip_frames: int, target_fps: float) -> None:
        self.every = skip_frames + 1
        self.rate = StreamRate(target_fps)
        self._count = 0

    def take(self, pts: float) -> bool:
        keep = self._count % self.every == 0
        self._count += 1
        return keep and self.rate.take(pts)


@dataclass(frozen=True)
class ReaderCounters:
    read: Counter
    published: Counter
    dropped: Counter
    reconnects: Counter

    @classmethod
    def create(cls, metrics: Metrics) -> ReaderCounters:
        labels = ("source_id",)
        return cls(
            read=metrics.counter("frames_read", "frames taken from the source (after skipping)", labels),
            published=metrics.counter("frames_published", "frame references published", labels),
            dropped=metrics.counter("frames_dropped", "frames dropped, by reason", ("source_id", "reason")),
            reconnects=metrics.counter("reconnects", "reconnections of a source", labels),
        )


class SourceRunner:
    def __init__(
        self,
        config: SourceConfig,
        settings: ReaderSettings,
        storage: SeaweedStorage,
        publish: Publish,
        wait_for_room: Callable[[], Awaitable[None]],
        on_health: Callable[[SourceHealth], Awaitable[None]],
        counters: ReaderCounters,
        instance: str,
        stop: asyncio.Event,
        run: str = "",
    ) -> None:
        self.config = config
        self.run_id = run
        self.settings = settings
        self.storage = storage
        self.publish = publish
        self.wait_for_room = wait_for_room
        self.on_health = on_health
        self.counters = counters
        self.instance = instance
        self.stop = stop
        self.live = is_live(config)
        # Files as fast as possible wait for the pipeline (nothing lost); anything paced sheds the oldest.
        self.policy = DropPolicy.DROP_OLDEST if (self.live or config.realtime) else DropPolicy.WAIT
        self.log = logging.getLogger("vigil.reader.source")
        self.extra = {"source_id": config.source_id}
        self.state: HealthState = SourceState.CONNECTING
        self._final: tuple[HealthState, str | None] = (SourceState.ENDED, None)
        # A file read to its end or to an error it cannot get past, as opposed to one stopped by request:
        # only such a file is done for good (services/reader/finished.py).
        self.ran_to_end = False
        self.state_since = time.time()
        self.last_error: str | None = None
        self.frames_read = 0
        self.frames_published = 0
        self.dropped: Tally[str] = Tally()
        self.reconnects = 0
        self.last_seq = -1
        self._seq = 0
        self._pts_offset = 0.0  # files that loop: stream time keeps counting across loops
        self._started_mono = time.monotonic()
        self._fps_window: tuple[float, int] = (time.monotonic(), 0)
        self.fps = 0.0
        # Decoding gets its own thread: a blocked camera read never starves encodes or other sources.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-{config.source_id}")

    # -- state -----------------------------------------------------------------------------------

    def health(self) -> SourceHealth:
        now = time.monotonic()
        since, count = self._fps_window
        if now - since >= 1.0:
            self.fps = (self.frames_read - count) / (now - since)
            self._fps_window = (now, self.frames_read)
        return SourceHealth(
            source_id=self.config.source_id,
            state=self.state,
            url=self.config.url,  # the contract scrubs any credentials out
            live=self.live,
            fps=round(max(self.fps, 0.0), 2),
            frames_read=self.frames_read,
            frames_published=self.frames_published,
            frames_dropped=dict(self.dropped),
            reconnects=self.reconnects,
            last_error=self.last_error,
            state_since=self.state_since,
            updated_at=time.time(),
            instance=self.instance,
        )

    async def _set_state(self, state: HealthState, error: str | None = None) -> None:
        if error is not None:
            self.last_error = error
        if state is self.state and error is None:
            return
        self.state, self.state_since = state, time.time()
        troubled = state in (SourceState.STALLED, SourceState.RECONNECTING, SourceState.FAILED)
        level = logging.WARNING if troubled else logging.INFO
        self.log.log(level, "source %s%s", state.value, f": {error}" if error else "", extra=self.extra)
        await self.on_health(self.health())

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self.counters.dropped.labels(source_id=self.config.source_id, reason=reason).inc()

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        raw: PolicyQueue[tuple[int, float, float, DecodedFrame] | None] = PolicyQueue(
            2 * self.settings.upload_concurrency, self.policy, lambda _item: self._drop("behind")
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._store_and_publish(raw))
                try:
                    await self._read(raw)
                finally:
                    await raw.put_wait(None)
            # Only now is every frame published: the final report must count them all.
            await self._set_state(*self._final)
        except Exception as exc:  # a runner ends in a state, never in an exception
            self.log.exception("source pipeline broke", extra=self.extra)
            await self._set_state(SourceState.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    async def _read(self, raw: PolicyQueue[tuple[int, float, float, DecodedFrame] | None]) -> None:
        failures = 0
        selector = FrameSelector(self.config.skip_frames, self.config.target_fps)
        while not self.stop.is_set():
            try:
                source = await asyncio.get_running_loop().run_in_executor(
                    self._decoder, open_source, self.config, self.settings.open_timeout, self.settings.read_timeout
                )
            except SourceError as exc:
                if not self.live:
                    return self._finish(SourceState.FAILED, str(exc))
                failures += 1
                if self.settings.max_reconnects and failures > self.settings.max_reconnects:
                    return self._finish(SourceState.FAILED, f"gave up after {failures - 1} reconnect(s): {exc}")
                await self._set_state(SourceState.RECONNECTING, str(exc))
                await self._backoff(failures)
                continue
            await self._set_state(SourceState.STREAMING)
            outcome, error, got_frames = await self._stream(source, raw, selector)
            if got_frames:
                failures = 0
            if outcome is Outcome.STOPPED:
                break
            if outcome is Outcome.EOF and not self.live:
                if self.config.loop and got_frames:
                    continue
                return self._finish(SourceState.ENDED)
            if outcome in (Outcome.ERROR, Outcome.STALLED) and not self.live:
                return self._finish(SourceState.FAILED, error)
            # A live source that ended, broke or stalled: cameras come back, so reconnect.
            failures += 1
            if self.settings.max_reconnects and failures > self.settings.max_reconnects:
                return self._finish(SourceState.FAILED, f"gave up after {failures - 1} reconnect(s): {error}")
            await self._set_state(SourceState.STALLED if outcome is Outcome.STALLED else SourceState.RECONNECTING, error)
            self.reconnects += 1
            self.counters.reconnects.labels(source_id=self.config.source_id).inc()
            await self._backoff(failures)
            if self.state is SourceState.STALLED:
                await self._set_state(SourceState.RECONNECTING)
        self._final = (SourceState.ENDED, None)  # stopped by request
        return None

    def _finish(self, state: HealthState, error: str | None = None) -> None:
        self._final = (state, error)
        self.ran_to_end = not self.live

    async def _backoff(self, failures: int) -> None:
        ceiling = min(self.settings.reconnect_max, self.settings.reconnect_initial * 2 ** (failures - 1))
        await sleep_unless_stopped(self.stop, random.uniform(ceiling / 2, ceiling))

    async def _stream(
        self,
        source: FrameSource,
        raw: PolicyQueue[tuple[int, float, float, DecodedFrame] | None],
        selector: FrameSelector,
    ) -> tuple[Outcome, str | None, bool]:
        loop = asyncio.get_running_loop()
        decoder = self._decoder
        frames: Iterator[DecodedFrame] = source.frames()
        got = False
        decoded = 0
        last_pts = 0.0
        paced_from = time.monotonic()
        pace = self.config.realtime and not self.live
        outcome, error = Outcome.STOPPED, None
        # Files are read a few frames per hop to the decode thread; a live frame goes on as soon as it is there.
        batch_size = 1 if self.live else _FILE_BATCH
        try:
            future = loop.run_in_executor(decoder, take_batch, frames, batch_size)
            while not self.stop.is_set():
                try:
                    batch, ended, failure = await asyncio.wait_for(asyncio.shield(future), timeout=self.settings.stall_timeout)
                except TimeoutError:
                    # The decoder thread is still blocked in a read: leave it to its read timeout (the source
                    # is closed after it) and reconnect on a fresh thread instead of queueing behind it.
                    self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-{self.config.source_id}")
                    outcome, error = Outcome.STALLED, f"no frame for {self.settings.stall_timeout:.0f} s"
                    return outcome, error, got
                if not ended:
                    # The next batch decodes while this one is handed on.
                    future = loop.run_in_executor(decoder, take_batch, frames, batch_size)
                for frame in batch:
                    got = True
                    decoded += 1
                    last_pts = frame.pts
                    await self._take(frame, raw, selector, pace, paced_from)
                if failure is not None:
                    return Outcome.ERROR, str(failure), got
                if ended:
                    outcome, error = Outcome.EOF, "the stream ended"
                    if not self.live and decoded < source.expected_frames * _COMPLETE_FILE:
                        # A cut file often just ends; the container's own frame count tells it was cut.
                        outcome = Outcome.ERROR
                        error = f"file ended after {decoded} of {source.expected_frames} frames: truncated or corrupt"
                    break
        finally:
            if outcome is Outcome.EOF and not self.live:
                self._pts_offset += last_pts + 1.0 / source.fps
            loop.run_in_executor(decoder, source.close)
            if decoder is not self._decoder:
                decoder.shutdown(wait=False)
        return outcome, error, got

    async def _take(
        self,
        frame: DecodedFrame,
        raw: PolicyQueue[tuple[int, float, float, DecodedFrame] | None],
        selector: FrameSelector,
        pace: bool,
        paced_from: float,
    ) -> None:
        # Live stream time is the reader's clock: it keeps counting across reconnects.
        pts = time.monotonic() - self._started_mono if self.live else self._pts_offset + frame.pts
        if pace:
            await asyncio.sleep(max(0.0, paced_from + frame.pts - time.monotonic()))
        if not selector.take(pts):
            return
        self.frames_read += 1
        self.counters.read.labels(source_id=self.config.source_id).inc()
        seq, self._seq = self._seq, self._seq + 1
        await raw.put((seq, pts, time.time(), frame))

    # -- encode, upload, publish, in order -------------------------------------------------------

    async def _store_and_publish(self, raw: PolicyQueue[tuple[int, float, float, DecodedFrame] | None]) -> None:
        inflight: asyncio.Queue[asyncio.Task[FrameRef | None] | None] = asyncio.Queue(self.settings.upload_concurrency)

        async def feed() -> None:
            while (item := await raw.get()) is not None:
                # Bounded by `inflight`: at most upload_concurrency frames encode or upload at once.
                await inflight.put(asyncio.create_task(self._store(*item)))
            await inflight.put(None)

        feeder = asyncio.create_task(feed())
        try:
            while (task := await inflight.get()) is not None:
                ref = await task
                if ref is None:
                    continue
                if self.policy is DropPolicy.WAIT:
                    await self.wait_for_room()
                try:
                    await self.publish(ref)
                except Exception as exc:  # noqa: BLE001 - counted; the stream goes on
                    self.log.warning("frame %d not published: %r", ref.seq, exc, extra=self.extra)
                    self._drop("publish_failed")
                    continue
                self.frames_published += 1
                self.counters.published.labels(source_id=self.config.source_id).inc()
                self.last_seq = ref.seq
        finally:
            await feeder

    async def _store(self, seq: int, pts: float, wall: float, frame: DecodedFrame) -> FrameRef | None:
        cfg = self.config
        data, width, height = await asyncio.get_running_loop().run_in_executor(
            _ENCODERS, shrink_and_encode, frame, cfg.jpeg_quality, cfg.max_width
        )
        storage = self.storage

        async def upload() -> str:
            return await storage.upload(data, ttl=self.settings.ttl_bucket)

        # A file waits for storage to come back (nothing lost); a live frame is soon stale, so it is dropped.
        timeout = self.settings.startup_timeout if self.policy is DropPolicy.WAIT else 1.0
        try:
            url = await retry_until("SeaweedFS upload", upload, timeout=timeout, log=self.log)
        except Exception as exc:  # noqa: BLE001 - counted and logged; the source goes on
            self.log.warning("frame %d not stored: %r", seq, exc, extra=self.extra)
            self._drop("upload_failed")
            return None
        return FrameRef(
            source_id=cfg.source_id,
            run=self.run_id,
            seq=seq,
            pts=pts,
            wall_time=wall,
            url=url,
            width=width,
            height=height,
            policy=self.policy,
        )
