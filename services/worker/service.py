"""The inference worker: pull tasks, download, decode, infer in batches, publish results, ack.

One service for every model: detection and classification are two roles of it, which differ only in their
settings' defaults (services.worker.settings) and their model folder. Everything model-specific lives in
`models/<name>/model.yaml`, read by services.worker.manifest and run by services.worker.onnx_model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any, Protocol

import numpy as np
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from redis.asyncio import Redis

from services.worker.crops import cut, pixels_needed_for_crops
from services.worker.manifest import ModelError
from services.worker.onnx_model import load_model
from services.worker.settings import WorkerSettings
from shared.bus import Outgoing, fetch
from shared.contracts import CropLabels, Heartbeat, InferenceResult, InferenceTask, ModelKind, Timings
from shared.discovery import HeartbeatPublisher
from shared.jpeg import Size, decode_for
from shared.keys import RedisKeys
from shared.lifecycle import Service, StartupError
from shared.retry import backoff_delays
from shared.storage import SeaweedStorage, Unfetchable
from shared.subjects import task_stream, task_stream_name, worker_durable


class InferenceModel(Protocol):
    """What a worker runs: `LoadedModel` for ONNX models; anything with these stages works (tests, benchmarks)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> ModelKind: ...

    @property
    def version(self) -> str: ...

    def pixels_needed(self, frame_size: Size) -> Size:
        """The (width, height) a frame of this size needs: a JPEG is decoded at 1/2, 1/4 or 1/8 where that still gives
        these, less shared.jpeg.UPSCALE_SLACK (decode_for). The frame's own size: always the full decode."""
        ...

    def preprocess(self, images: Sequence[np.ndarray]) -> Any: ...

    def run(self, batch: Any) -> Any: ...

    def postprocess(
        self, outputs: Any, original_sizes: Sequence[Size], decoded_sizes: Sequence[Size] | None = None
    ) -> list[Any]: ...


class _Job:
    """One task on its way through a batch."""

    def __init__(self, msg: Msg, task: InferenceTask) -> None:
        self.msg = msg
        self.task = task
        # The frame, possibly decoded smaller than it is (see sizes), or a crop task's crops of it, in its boxes' order.
        self.images: list[np.ndarray] = []
        self.sizes: list[Size] = []  # (width, height) of the frame (or of the crop, in the frame) each image stands for
        self.error: str | None = None
        self.output: list[Any] | None = None  # detections or classifications; a crop task's: one list per crop
        self.download_ms = 0.0
        self.transient: str | None = None  # why the frame could not be fetched this time (storage away): try again


class InferenceWorker(Service[WorkerSettings]):
    name = "worker"

    def __init__(self, settings: WorkerSettings) -> None:
        # One class for every role: its logs and metrics take the role's name (vigil.detection, vigil_detection_*).
        self.name = settings.service_name
        super().__init__(settings)
        self.keys = RedisKeys(settings)
        self.model: InferenceModel | None = None
        self.storage: SeaweedStorage | None = None
        self.redis: Redis | None = None
        self.started_at = time.time()
        self.processed = 0
        self.in_flight = 0
        self._fps = 0.0
        self._warmed = False  # the first batch ran (its rate is not counted)
        self._announced_fps = 0.0  # the rate when a heartbeat was last asked for at once (see _run_batch)
        self._beats: HeartbeatPublisher | None = None
        labels = ("model",)
        self.m_results = self.metrics.counter("results", "results published", labels)
        self.m_errors = self.metrics.counter("error_results", "error results (download, decode, inference)", ("model", "reason"))
        self.m_infer = self.metrics.histogram("infer", "onnxruntime time per batch", labels)
        self.m_redelivered = self.metrics.counter("tasks_redelivered", "tasks delivered again (a replica died)", labels)
        self.m_retried = self.metrics.counter(
            "tasks_retried", "tasks whose frame was fetched again after a transient failure", labels
        )

    def load_model(self) -> InferenceModel:
        s = self.settings
        return load_model(
            s.model_dir, providers=s.providers or None, intra_op_threads=s.intra_op_threads, allow_spinning=s.ort_allow_spinning
        )

    @property
    def model_name(self) -> str:
        assert self.model is not None
        return self.model.name

    async def start(self, stack: AsyncExitStack) -> None:
        s = self.settings
        # Inference always runs on this one thread: ONNX Runtime has its own pool for the parallel work,
        # and one caller thread means one allocator arena holding its buffers, not one per pool thread.
        self._infer_thread = ThreadPoolExecutor(1, thread_name_prefix="infer")
        stack.callback(self._infer_thread.shutdown)
        # The model first: a missing or corrupt model is a clear error before any connection is made.
        try:
            self.model = await asyncio.get_running_loop().run_in_executor(self._infer_thread, self.load_model)
        except ModelError as exc:
            raise StartupError(str(exc)) from None
        # One inference before the first task: the first run allocates and tunes (4-5 times a normal one),
        # which would otherwise land on the first frames of a live camera.
        blank = np.zeros((480, 640, 3), np.uint8)
        await asyncio.get_running_loop().run_in_executor(self._infer_thread, self._infer, [blank])
        await self.open_bus(stack)
        await self.bus.ensure_stream(
            # Twice task_max_age: a worker sheds an older task itself, with an error result (see _load); the stream's
            # own limit only clears a queue that no worker reads.
            task_stream(s, self.model_name, s.task_subject, max_age=2 * s.task_max_age, cap=s.task_queue_cap)
        )
        self.redis = await self.open_redis(stack)
        self.storage = await self.open_storage(stack)

    def heartbeat(self) -> Heartbeat:
        assert self.model is not None
        return Heartbeat(
            model=self.model_name,
            kind=self.model.kind,
            subject=self.settings.task_subject,
            instance=self.instance,
            started_at=self.started_at,
            processed=self.processed,
            in_flight=self.in_flight,
            fps=round(self._fps, 2),
        )

    def health(self) -> dict[str, Any]:
        return super().health() | {"model": self.model_name, "processed": self.processed, "fps": round(self._fps, 2)}

    async def run(self) -> None:
        s = self.settings
        assert self.redis is not None
        stream = task_stream_name(s, self.model_name)
        # max_ack_pending bounds what all replicas together hold; each replica fetches one batch at a time.
        sub = await self.bus.durable_pull(
            stream, worker_durable(self.model_name), ack_wait=s.ack_wait, max_deliver=s.task_max_deliver, max_ack_pending=256
        )
        self._beats = beats = HeartbeatPublisher(self.redis, self.keys, s.routing_ttl, self.heartbeat)
        await beats.publish_once()  # live at once: the router may route to us now
        # Three stages: the next batch downloads and decodes, and the last one's results publish, while
        # this one infers. One batch waits between stages at most, so a worker holds at most five
        # batches (fetching, ready, running, answered, publishing).
        ready: asyncio.Queue[list[_Job] | None] = asyncio.Queue(maxsize=1)
        answered: asyncio.Queue[tuple[list[_Job], Timings] | None] = asyncio.Queue(maxsize=1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(beats.run(self.stop_event))
            tg.create_task(self._prepare(sub, ready))
            publisher = tg.create_task(self._publish(answered))
            try:
                while (jobs := await ready.get()) is not None:
                    await answered.put((jobs, await self._run_batch(jobs)))
            finally:
                await answered.put(None)
            await publisher
        await beats.remove()

    async def _prepare(self, sub: JetStreamContext.PullSubscription, ready: asyncio.Queue[list[_Job] | None]) -> None:
        try:
            while not self.stop_event.is_set():
                msgs = await fetch(sub, self.settings.batch_size, timeout=0.5)
                jobs = await self._load(msgs)
                if jobs:
                    await ready.put(jobs)
        finally:
            # On stop, what was fetched is still run and answered: nothing waits for ack_wait.
            await ready.put(None)

    async def _load(self, msgs: list[Msg]) -> list[_Job]:
        jobs: list[_Job] = []
        for msg in msgs:
            task = await self.bus.decode(msg, InferenceTask)
            if task is None:
                await msg.term()
                continue
            if msg.metadata.num_delivered and msg.metadata.num_delivered > 1:
                self.m_redelivered.labels(model=self.model_name).inc()
            job = _Job(msg, task)
            age = time.time() - task.routed_at
            if task.crop is not None and self.model is not None and self.model.kind is not ModelKind.CLASSIFICATION:
                job.error = (
                    f"crop task for {self.model_name}, a {self.model.kind.value} model: crops are for classification models"
                )
            elif age > self.settings.task_max_age:
                # Answered, not left to expire: the stream keeps a task twice as long as this, so a worker that fell
                # behind (after an outage, say) says which frames it shed, and the registrator waits for none of them.
                job.error = f"expired: routed {age:.0f} s ago, past task_max_age ({self.settings.task_max_age:g} s)"
            jobs.append(job)
        self.in_flight += len(jobs)
        # Kept from redelivery while they load: a download that hangs (a server stopping) can outlast ack_wait,
        # and the copy delivered meanwhile would be answered twice.
        keeper = asyncio.create_task(self._keep_alive(jobs))
        try:
            await asyncio.gather(*(self._fetch_image(job) for job in jobs if job.error is None))
            await self._retry_in_place([job for job in jobs if job.transient is not None])
        finally:
            keeper.cancel()
        return jobs

    async def _keep_alive(self, jobs: list[_Job]) -> None:
        while True:
            await asyncio.sleep(self.settings.ack_wait / 3)
            for job in jobs:
                with contextlib.suppress(Exception):  # NATS away too: redelivery is the fallback
                    await job.msg.in_progress()

    async def _retry_in_place(self, jobs: list[_Job]) -> None:
        """Storage away: the batch is held (kept from redelivery by _keep_alive) and its downloads tried again
        with backoff. No newer task overtakes it (given back, it came back after newer frames, and results out of
        stream order split events), and an outage costs time, not results, while the task can still be answered
        before it expires (task_max_age, less one ack_wait). Past that, an error result; on a stop, it is given
        back (see _give_back)."""
        s = self.settings
        delays = backoff_delays(0.5, 4.0)
        if jobs:
            self.m_retried.labels(model=self.model_name).inc(len(jobs))
            self.log.warning(
                "%s; %d task(s) held and tried again", jobs[0].transient, len(jobs), extra={"model": self.model_name}
            )
        while jobs:
            left = min(job.task.routed_at for job in jobs) + s.task_max_age - s.ack_wait - time.time()
            if left <= 0:
                for job in jobs:
                    job.error, job.transient = f"frame unavailable until the task's age ran out: {job.transient}", None
                return
            if await self.pause(min(next(delays), left)):
                return  # stopping: still transient, so given back
            for job in jobs:
                job.transient = None
            await asyncio.gather(*(self._fetch_image(job) for job in jobs))
            jobs = [job for job in jobs if job.transient is not None]

    async def _publish(self, answered: asyncio.Queue[tuple[list[_Job], Timings] | None]) -> None:
        while (item := await answered.get()) is not None:
            jobs, timings = item
            await self._finish(jobs, timings)
            self.in_flight -= len(jobs)

    async def _run_batch(self, jobs: list[_Job]) -> Timings:
        """Infer the jobs that have an image; the others keep their error, or are given back."""
        started = time.perf_counter()
        ready = [job for job in jobs if job.error is None and job.transient is None]
        timings = Timings()
        if ready:
            try:
                outputs, timings = await asyncio.get_running_loop().run_in_executor(
                    self._infer_thread,
                    self._infer,
                    [image for job in ready for image in job.images],  # a crop task's crops batch with the rest
                    [size for job in ready for size in job.sizes],
                )
                at = 0
                for job in ready:
                    n = len(job.images)
                    job.output = outputs[at : at + n] if job.task.crop is not None else outputs[at]
                    at += n
            except Exception as exc:  # a bad batch gives error results, the worker goes on
                self.log.exception("inference failed", extra={"model": self.model_name})
                for job in ready:
                    job.error = f"inference failed: {exc!r}"
        elapsed = time.perf_counter() - started
        if elapsed > 0 and not self._warmed:
            # The first batch pays for first uses (ONNX Runtime's allocations: 4-5 times a later batch): its rate
            # would make the router shed live frames the worker can answer. Until a second batch, no rate at all.
            self._warmed = True
        elif elapsed > 0:
            # The router turns this rate into how much queued work is live_backlog_seconds: from one batch, not an
            # average that starts at 0 and takes a dozen batches to reach it. The heartbeat goes out at once whenever
            # the rate has doubled or halved since it last did, not only at the next third of routing_ttl.
            rate = len(jobs) / elapsed
            self._fps = rate if not self._fps else 0.8 * self._fps + 0.2 * rate
            if self._beats is not None and not self._announced_fps / 2 <= self._fps <= 2 * self._announced_fps:
                self._announced_fps = self._fps
                self._beats.soon()
        return timings

    async def _fetch_image(self, job: _Job) -> None:
        assert self.storage is not None and self.model is not None
        t0 = time.perf_counter()
        try:
            # From storage, not in the task: frames cross processes and machines only through SeaweedFS (signed,
            # over TLS, from the configured hosts), and a task stays a few hundred bytes on the bus.
            data = await self.storage.download(job.task.frame.url)
        except Unfetchable as exc:  # final (gone, foreign host, redirect, too large): no retry brings it back
            job.error = f"frame unavailable: {exc}"
        except Exception as exc:  # noqa: BLE001 - storage unreachable or failing: transient
            job.transient = f"storage: {exc!r}"
        else:
            try:
                # On a thread (cv2 releases the GIL): the batch's other downloads and the last batch's results go on
                # meanwhile. Decoded no larger than the model needs (1/2, 1/4, 1/8: libjpeg's DCT scaling).
                job.images, job.sizes = await asyncio.to_thread(self._decode, data, job.task)
            except Exception as exc:  # noqa: BLE001 - a corrupt JPEG: final
                job.error = f"bad image: {exc}"
        job.download_ms = (time.perf_counter() - t0) * 1000

    def _decode(self, data: bytes, task: InferenceTask) -> tuple[list[np.ndarray], list[Size]]:
        """The frame as the model sees it, or a crop task's crops of it (decoded reduced only where every crop
        keeps the pixels the model needs: a crop small against the model's input needs the full decode)."""
        assert self.model is not None
        crop = task.crop
        if crop is None:
            image, frame_size = decode_for(data, self.model.pixels_needed, self.settings.image_max_pixels)
            return [image], [frame_size]
        needed = self.model.pixels_needed
        image, frame_size = decode_for(
            data, lambda size: pixels_needed_for_crops(size, crop.boxes, needed), self.settings.image_max_pixels
        )
        crops = cut(image, frame_size, crop.boxes)
        return crops, [(c.shape[1], c.shape[0]) for c in crops]

    def _infer(self, images: list[np.ndarray], frame_sizes: list[Size] | None = None) -> tuple[list[Any], Timings]:
        """frame_sizes: those of the frames the images stand for, when decoded smaller (boxes come out in them)."""
        assert self.model is not None
        t0 = time.perf_counter()
        batch = self.model.preprocess(images)
        t1 = time.perf_counter()
        raw = self.model.run(batch)
        t2 = time.perf_counter()
        decoded = [(img.shape[1], img.shape[0]) for img in images]
        outputs = self.model.postprocess(raw, frame_sizes or decoded, decoded)
        t3 = time.perf_counter()
        n = len(images)
        self.m_infer.labels(model=self.model_name).observe(t2 - t1)
        return outputs, Timings(
            preprocess_ms=(t1 - t0) * 1000 / n, infer_ms=(t2 - t1) * 1000 / n, postprocess_ms=(t3 - t2) * 1000 / n
        )

    def _result(self, job: _Job, timings: Timings) -> InferenceResult:
        assert self.model is not None
        output = job.output or []
        kind = self.model.kind
        if job.error:
            reason = job.error.split(":", 1)[0]
            self.m_errors.labels(model=self.model_name, reason=reason).inc()
            self.log.warning("%s", job.error, extra={"model": self.model_name, "frame_id": job.task.frame.frame_id})
        crop = job.task.crop
        return InferenceResult(
            frame=job.task.frame,
            model=self.model_name,
            kind=kind,
            instance=self.instance,
            model_version=self.model.version,
            detections=output if kind is ModelKind.DETECTION else [],
            classifications=output if kind is ModelKind.CLASSIFICATION and crop is None else [],
            error=job.error,
            timings=timings.model_copy(update={"download_ms": job.download_ms}),
            finished_at=time.time(),
            crop_of=crop.of if crop is not None else None,
            crops=[CropLabels(box=box, classifications=labels) for box, labels in zip(crop.boxes, output, strict=True)]
            if crop is not None and job.error is None
            else [],
        )

    async def _give_back(self, job: _Job) -> bool:
        """Stopping with a task whose frame could not be fetched yet: nak it with a backoff (4 s, 8 s, ... up to
        ack_wait) for the next replica. On its last delivery it is answered with an error instead: the registrator
        then waits for nothing that will never come. True when given back."""
        delivered = job.msg.metadata.num_delivered or 1
        if delivered >= self.settings.task_max_deliver:
            job.error = f"frame unavailable after {delivered} tries: {job.transient}"
            return False
        delay = min(4.0 * 2 ** (delivered - 1), self.settings.ack_wait)
        self.log.warning(
            "%s; task given back for %.0f s",
            job.transient,
            delay,
            extra={"model": self.model_name, "frame_id": job.task.frame.frame_id},
        )
        self.m_retried.labels(model=self.model_name).inc()
        await job.msg.nak(delay=delay)
        return True

    async def _finish(self, jobs: list[_Job], timings: Timings) -> None:
        """Publish the batch's results together; ack each task only once its result is stored."""
        jobs = [job for job in jobs if job.transient is None or not await self._give_back(job)]
        results = [Outgoing.of(self.bus.subjects.results(job.task.frame.source_id), self._result(job, timings)) for job in jobs]
        outcomes = await self.bus.publish_many(results)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome is not None:  # not acked, so the task is redelivered after ack_wait
                self.log.warning("result not published, task left for redelivery: %r", outcome)
                continue
            await job.msg.ack()
            self.processed += 1
            self.m_results.labels(model=self.model_name).inc()
