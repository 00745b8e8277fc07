"""Downloads are bounded: no redirect is followed, no body past download_max_mb is read, no JPEG whose header
claims more than image_max_pixels is decoded; a worker answers each with an error result, once, and goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import numpy as np
import pytest
from aiohttp import web
from redis.asyncio import Redis

from fleet.clients import connect_nats, redis_client
from shared.bus import Bus
from shared.contracts import FrameRef, InferenceResult, InferenceTask
from shared.discovery import live_instances
from shared.jpeg import encode_jpeg
from shared.keys import RedisKeys
from shared.metrics import Metrics, counter_value
from shared.settings import VigilSettings
from shared.storage import RefusedDownload, SeaweedStorage
from shared.subjects import results_stream
from tests.integration.helpers import running, wait_for
from tests.support.garbage import jpeg_bomb
from tests.support.noop_worker import NoopSettings, NoopWorker
from tests.support.settings import settings_from

LIMIT_MB = 0.25  # a quarter MiB: a small upload is over it
BIG = b"\xff\xd8" + bytes(300 * 1024)


@asynccontextmanager
async def rogue_host(target: str) -> AsyncIterator[str]:
    """An allowed storage host gone bad: /redirect points elsewhere, /endless streams with no Content-Length."""

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)  # chunked: the size is not known until the end
        for _ in range(64):
            await response.write(bytes(64 * 1024))
        return response

    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/endless", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_storage_refuses_redirects_and_bodies_over_the_cap(service_env: dict[str, str]) -> None:
    async with SeaweedStorage(settings_from(VigilSettings, service_env)) as uploader:  # type: ignore[arg-type]
        small = await uploader.upload(b"\xff\xd8 small", ttl="5m")
        big = await uploader.upload(BIG, ttl="5m")
    async with rogue_host(small) as host:
        env: dict[str, object] = service_env | {"download_max_mb": str(LIMIT_MB), "storage_allowed_hosts": [host]}
        async with SeaweedStorage(settings_from(VigilSettings, env)) as storage:  # type: ignore[arg-type]
            assert await storage.download(small) == b"\xff\xd8 small"
            with pytest.raises(RefusedDownload, match=r"redirect \(302 to https?://127\.0\.0\.1:\d+/[^)]+\): not followed"):
                await storage.download(f"http://{host}/redirect")
            with pytest.raises(RefusedDownload, match=r"over download_max_mb \(0\.25 MiB\)"):
                await storage.download(big)  # SeaweedFS says its size: refused before reading
            with pytest.raises(RefusedDownload, match="over download_max_mb"):
                await storage.download(f"http://{host}/endless")  # no size given: refused while reading


async def test_a_worker_answers_a_bomb_a_redirect_and_an_oversize_frame_once_and_goes_on(
    service_env: dict[str, str],
) -> None:
    async with SeaweedStorage(settings_from(VigilSettings, service_env)) as uploader:  # type: ignore[arg-type]
        good = await uploader.upload(encode_jpeg(np.zeros((48, 64, 3), np.uint8)), ttl="5m")
        bomb = await uploader.upload(jpeg_bomb(), ttl="5m")
        big = await uploader.upload(BIG, ttl="5m")
    async with rogue_host(good) as host:
        env = service_env | {
            "download_max_mb": str(LIMIT_MB),
            "storage_allowed_hosts": [host],
            "noop_model": "noop",
            "model_dir": ".",
        }
        settings = settings_from(NoopSettings, env)
        worker = NoopWorker(settings)
        owner = Bus(settings_from(VigilSettings, service_env), "registrator", "t", Metrics("owner"))  # type: ignore[arg-type]
        await owner.connect()
        await owner.ensure_stream(results_stream(owner.settings))
        watcher = await connect_nats(service_env)
        results = await watcher.subscribe(owner.subjects.results_all)
        redis = redis_client(settings)
        try:
            async with running(worker, lambda w: w.model is not None):
                await wait_for_worker(redis, RedisKeys(settings))
                subject = owner.subjects.task(settings.task_subject)
                urls = {1: bomb, 2: f"http://{host}/redirect", 3: big, 4: good}
                for seq, url in urls.items():
                    ref = FrameRef(source_id="cam0", seq=seq, pts=seq, wall_time=time.time(), url=url, width=64, height=48)
                    await owner.publish(subject, InferenceTask(frame=ref, model="noop", routed_at=time.time()))
                got: dict[int, InferenceResult] = {}
                for _ in urls:
                    result = InferenceResult.from_bytes((await results.next_msg(timeout=30)).data)
                    got[result.frame.seq] = result
                await wait_for(lambda: worker.processed == 4, 10, "four tasks acked")
                await asyncio.sleep(0.5)  # a fifth result would be a redelivery
                with pytest.raises(nats.errors.TimeoutError):
                    await results.next_msg(timeout=0.5)
                assert counter_value(worker.m_retried, model="noop") == 0  # answered, never given back
        finally:
            await redis.aclose()
            await watcher.close()
            await owner.close()
    assert "bad image" in (got[1].error or "") and "32768x32768" in (got[1].error or "")
    assert "frame unavailable" in (got[2].error or "") and "redirect" in (got[2].error or "")
    assert "frame unavailable" in (got[3].error or "") and "download_max_mb" in (got[3].error or "")
    assert got[4].error is None  # still serving


async def wait_for_worker(redis: Redis, keys: RedisKeys) -> None:
    for _ in range(100):  # the worker declares its task stream during start
        if (await live_instances(redis, keys)).get("noop"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the worker never said it was up")
