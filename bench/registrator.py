"""Registrator: results absorbed per second, and the seconds to finalise a 10-second event (download,
decode, H.264 encode, upload) next to PyAV encoding the same frames alone, in the same run."""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

from bench.common import ROOT, median, print_table, write_result
from fleet.processes import start_service
from fleet.servers import LocalServers, ServerSet
from services.registrator.clips import ClipFrames, write_clip
from services.registrator.events import OpenEvent
from services.registrator.proofs import make_proofs
from services.registrator.segments import SegmentCache
from shared.bus import Bus, Outgoing
from shared.contracts import BBox, Detection, FrameRef, InferenceResult, ModelKind
from shared.jpeg import decode_jpeg, encode_jpeg
from shared.metrics import Metrics
from shared.settings import VigilSettings
from shared.storage import SeaweedStorage
from shared.subjects import frames_stream, registrator_results_durable, results_stream_name

RESULTS = 4000
EVENT_SECONDS, ROLL = 10, 2


async def absorb(servers: ServerSet) -> dict[str, float]:
    """Results with a person in every frame (an event open all along) into `python -m services.registrator`."""
    prefix = f"g{secrets.token_hex(3)}"
    settings = VigilSettings(_env_file=None, **servers.env(), subject_prefix=prefix)  # type: ignore[arg-type]
    bus = Bus(settings, "bench", "bench", Metrics("bench"))
    await bus.connect()
    await bus.ensure_stream(frames_stream(settings))
    env = servers.env() | {"subject_prefix": prefix, "max_event_duration": "1000", "ttl_bucket": "30m"}
    process = await start_service("services.registrator", env)
    try:
        while True:  # the registrator declares its stream when it starts (the source's consumer once it has results)
            try:
                await bus.js.stream_info(results_stream_name(settings))
                break
            except Exception:  # noqa: BLE001 - not up yet
                process.check_running()
                await asyncio.sleep(0.1)
        det = Detection.on_image("person", 0, 0.9, BBox(x1=0.1, y1=0.1, x2=0.3, y2=0.6), 768, 576)
        items: list[tuple[str, Any]] = [
            Outgoing.of(
                bus.subjects.results("bench"),
                InferenceResult(
                    frame=FrameRef(
                        source_id="bench",
                        seq=i,
                        pts=i / 10,
                        wall_time=time.time(),
                        url="http://127.0.0.1:1/1,01",
                        width=768,
                        height=576,
                    ),
                    model="ssd",
                    kind=ModelKind.DETECTION,
                    instance="b",
                    detections=[det],
                    finished_at=time.time(),
                ),
            )
            for i in range(RESULTS)
        ]
        started = time.perf_counter()
        for i in range(0, RESULTS, 256):
            await bus.publish_many(items[i : i + 256])
        stream, durable = results_stream_name(settings), registrator_results_durable("bench")
        while not await consumer_exists(bus, stream, durable) or await bus.backlog(stream, durable):
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
    finally:
        await process.stop()
        await bus.close()
    return {"results_per_s": RESULTS / seconds}


async def consumer_exists(bus: Bus, stream: str, durable: str) -> bool:
    try:
        await bus.js.consumer_info(stream, durable)
    except Exception:  # noqa: BLE001 - not made yet: the registrator makes it once it holds the source
        return False
    return True


async def finalise(servers: ServerSet, tmp: Path) -> dict[str, float]:
    settings = VigilSettings(_env_file=None, **servers.env())  # type: ignore[arg-type]
    frames = (EVENT_SECONDS + 2 * ROLL) * 10 + 1
    cap = cv2.VideoCapture(str(ROOT / "video" / "vtest.mp4"))
    jpegs = [encode_jpeg(cap.read()[1]) for _ in range(frames)]
    cap.release()
    async with SeaweedStorage(settings) as storage:
        urls = [await storage.upload(j, ttl="30m") for j in jpegs]
        refs = [
            FrameRef(source_id="bench", seq=i, pts=i / 10, wall_time=0, url=u, width=768, height=576) for i, u in enumerate(urls)
        ]
        event = OpenEvent(
            id=f"bench-{secrets.token_hex(4)}",
            source_id="bench",
            model="ssd",
            label="person",
            start=ROLL,
            end=ROLL + EVENT_SECONDS,
            start_wall=time.time(),
            best_frame_url=refs[70].url,
        )
        started = time.perf_counter()
        # One frame per tick from 0 s: every frame of the clip encoded, as a source's first event has it.
        await make_proofs(storage, tmp, event, ClipFrames(0, refs), 10, SegmentCache(2**30, 3600.0))
        whole = time.perf_counter() - started
    images = [decode_jpeg(j) for j in jpegs]
    started = time.perf_counter()
    await asyncio.to_thread(write_clip, images, tmp / "alone.mp4", 10)
    alone = time.perf_counter() - started
    return {"frames": frames, "finalise_s": whole, "encode_alone_s": alone}


async def main(repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        servers = LocalServers(Path(tmp) / "servers")
        server_set = servers.start()
        try:
            absorbed, finals = [], []
            for i in range(repeats):
                absorbed.append(await absorb(server_set))
                finals.append(await finalise(server_set, Path(tmp)))
                print(
                    f"run {i + 1}/{repeats}: {absorbed[-1]['results_per_s']:.0f} results/s, finalise "
                    f"{finals[-1]['finalise_s']:.2f} s, PyAV alone {finals[-1]['encode_alone_s']:.2f} s",
                    flush=True,
                )
        finally:
            servers.stop()
    fin, alone = median([f["finalise_s"] for f in finals]), median([f["encode_alone_s"] for f in finals])
    print_table(
        f"registrator; medians of {repeats} runs",
        ["measure", "value"],
        [
            [f"results absorbed per second ({RESULTS}, an event open)", median([a["results_per_s"] for a in absorbed])],
            [f"finalise a {EVENT_SECONDS} s event: {finals[0]['frames']} frames fetched, decoded, encoded, stored (s)", fin],
            ["PyAV encoding the same frames alone (s)", alone],
            ["ratio finalise / encode alone", fin / alone],
        ],
    )
    write_result("registrator", {"repeats": repeats, "absorb": absorbed, "finalise": finals})


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
