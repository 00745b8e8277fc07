"""Worker throughput end to end (NATS task in, SeaweedFS download, JPEG decode, inference, result out)
next to a bare ONNX Runtime loop over the same decoded frames with the same threads, in the same run.

For each model and batch size: the frames are stored in SeaweedFS, the tasks published all at once to the
model's work queue, and `python -m services.<role>` is timed from its first result to its last. The bare
loop runs the model's own preprocess, session and postprocess over the decoded JPEGs, one batch at a time.
"""

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
from fleet.clients import redis_client
from fleet.processes import start_service
from fleet.servers import LocalServers, ServerSet
from services.worker.manifest import load_spec
from services.worker.onnx_model import load_model
from shared.bus import Bus, Outgoing
from shared.contracts import FrameRef, InferenceResult, InferenceTask
from shared.discovery import live_instances
from shared.jpeg import decode_for, decode_jpeg, encode_jpeg
from shared.keys import RedisKeys
from shared.metrics import Metrics
from shared.settings import VigilSettings
from shared.storage import SeaweedStorage
from shared.subjects import results_stream

FRAMES = 160
# (service, model folder, task subject, batch size, worker replicas, ONNX Runtime threads in all).
# The bare loop gets the same threads. With 1 thread the worker's download, JPEG decode and bus work have
# the second core to themselves; with 2 they take it from inference, which is what caps the ratio here.
CASES = [
    ("detection", "ssd_mobilenet_v2_coco", "DetectionInference", 1, 1, 1),
    ("detection", "ssd_mobilenet_v2_coco", "DetectionInference", 1, 1, 2),
    ("detection", "ssd_mobilenet_v2_coco", "DetectionInference", 1, 2, 2),
    ("classification", "efficientnet_lite0", "ClassificationInference", 1, 1, 2),
    ("classification", "efficientnet_lite0", "ClassificationInference", 8, 1, 2),
    ("classification", "efficientnet_lite0", "ClassificationInference", 8, 2, 2),
]


DECODE_LAPS = ("full_decode", "full_preprocess", "reduced_decode", "reduced_preprocess")


def sample_jpegs(count: int) -> list[bytes]:
    cap = cv2.VideoCapture(str(ROOT / "video" / "vtest.mp4"))
    out = []
    while len(out) < count:
        ok, image = cap.read()
        if not ok:
            break
        out.append(encode_jpeg(image, 85))
    cap.release()
    return out


def decode_and_preprocess(model_dir: Path, jpegs: list[bytes], repeats: int) -> dict[str, Any]:
    """ms per frame of the JPEG decode and of the model's preprocess, full decode next to the reduced one the
    worker does (shared.jpeg.decode_for), alternating frame by frame so that load hits both alike."""
    model = load_model(model_dir, intra_op_threads=1)
    laps: dict[str, list[float]] = {k: [] for k in DECODE_LAPS}
    reduced_size = (0, 0)
    for _ in range(repeats):
        for jpeg in jpegs:
            t0 = time.perf_counter()
            image = decode_jpeg(jpeg)
            t1 = time.perf_counter()
            model.preprocess([image])
            t2 = time.perf_counter()
            small, _ = decode_for(jpeg, model.pixels_needed)
            t3 = time.perf_counter()
            model.preprocess([small])
            t4 = time.perf_counter()
            for key, seconds in zip(laps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                laps[key].append(seconds * 1000)
            reduced_size = (small.shape[1], small.shape[0])
    return {"decoded_at": reduced_size} | {f"{k}_ms": median(v) for k, v in laps.items()}


def bare_loop(model_dir: Path, images: list[Any], batch: int, threads: int) -> dict[str, float]:
    model = load_model(model_dir, intra_op_threads=threads)
    model.infer(images[:batch])  # warm-up: the first run allocates
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        model.infer(images[i : i + batch])
    seconds = time.perf_counter() - started
    return {"per_s": len(images) / seconds}


async def worker_run(
    servers: ServerSet,
    service: str,
    folder: str,
    subject: str,
    batch: int,
    replicas: int,
    threads: int,
    urls: list[str],
) -> dict[str, float]:
    prefix = f"w{secrets.token_hex(3)}"
    settings = VigilSettings(_env_file=None, **servers.env(), subject_prefix=prefix)  # type: ignore[arg-type]
    bus = Bus(settings, "bench", "bench", Metrics("bench"))
    await bus.connect()
    await bus.ensure_stream(results_stream(settings))
    times: list[float] = []
    stages: list[Any] = []
    errors = 0

    async def on_result(msg: Any) -> None:
        nonlocal errors
        result = InferenceResult.from_bytes(msg.data)
        errors += result.error is not None
        times.append(time.perf_counter())
        stages.append(result.timings)

    await bus.nc.subscribe(bus.subjects.results_all, cb=on_result)  # type: ignore[union-attr]
    env = servers.env() | {
        "subject_prefix": prefix,
        "batch_size": str(batch),
        "intra_op_threads": str(threads // replicas),
        "model_dir": str(ROOT / "models" / folder),
    }
    processes = [await start_service(f"services.{service}", env | {"instance": f"w{i}"}, name=f"w{i}") for i in range(replicas)]
    redis = redis_client(servers.env())
    try:
        deadline = time.monotonic() + 60
        while sum(len(v) for v in (await live_instances(redis, RedisKeys(settings))).values()) < replicas:
            for process in processes:
                process.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {service} workers did not come up")
            await asyncio.sleep(0.05)
        model = load_spec(ROOT / "models" / folder).name
        tasks = [
            Outgoing.of(
                bus.subjects.task(subject),
                InferenceTask(
                    frame=FrameRef(source_id="bench", seq=i, pts=i / 10, wall_time=time.time(), url=url, width=768, height=576),
                    model=model,
                    routed_at=time.time(),
                ),
            )
            for i, url in enumerate(urls)
        ]
        await bus.publish_many(tasks)
        while len(times) < len(urls):
            if time.monotonic() > deadline + 120:
                raise RuntimeError(f"only {len(times)} of {len(urls)} results")
            await asyncio.sleep(0.05)
    finally:
        for process in processes:
            await process.stop()
        await redis.aclose()
        await bus.close()
    # From the first result to the last: the steady state, without the model's load and first run.
    keys = ("download_ms", "preprocess_ms", "infer_ms", "postprocess_ms")
    stage_ms = {k: median([getattr(t, k) for t in stages]) for k in keys}
    return {"per_s": (len(times) - 1) / (times[-1] - times[0]), "errors": errors} | stage_ms


async def main(repeats: int) -> None:
    jpegs = sample_jpegs(FRAMES)
    images = [decode_jpeg(j) for j in jpegs]
    rows: list[list[Any]] = []
    doc: dict[str, Any] = {"frames": len(jpegs), "repeats": repeats, "cases": [], "decode_preprocess": {}}
    for folder in ("ssd_mobilenet_v2_coco", "efficientnet_lite0"):
        got = doc["decode_preprocess"][folder] = decode_and_preprocess(ROOT / "models" / folder, jpegs, repeats)
        rows.append([folder, "x".join(map(str, got["decoded_at"]))] + [got[f"{k}_ms"] for k in DECODE_LAPS])
    print_table(
        f"JPEG decode and preprocess per frame (768x576, quality 85), full decode vs the worker's reduced one; "
        f"medians over {len(jpegs)} frames x {repeats}",
        ["model", "decoded at", "full: decode ms", "preprocess ms", "reduced: decode ms", "preprocess ms"],
        rows,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        servers = LocalServers(Path(tmp))
        server_set = servers.start()
        try:
            settings = VigilSettings(_env_file=None, **server_set.env())  # type: ignore[arg-type]
            async with SeaweedStorage(settings) as storage:
                urls = [await storage.upload(j, ttl="30m") for j in jpegs]
            for service, folder, subject, batch, replicas, threads in CASES:
                bare, worker = [], []
                for _ in range(repeats):
                    bare.append(await asyncio.to_thread(bare_loop, ROOT / "models" / folder, images, batch, threads))
                    worker.append(await worker_run(server_set, service, folder, subject, batch, replicas, threads, urls))
                ratio = median([w["per_s"] / b["per_s"] for w, b in zip(worker, bare, strict=True)])
                row = [
                    folder,
                    batch,
                    threads,
                    f"{replicas} x {threads // replicas}",
                    median([b["per_s"] for b in bare]),
                    median([w["per_s"] for w in worker]),
                    ratio,
                ]
                rows.append(row)
                stage = {k: round(v, 1) for k, v in worker[-1].items() if k.endswith("_ms")}
                print(
                    f"{folder} batch {batch} threads {threads} x{replicas}: bare {row[4]:.1f}/s, "
                    f"worker {row[5]:.1f}/s, ratio {ratio:.2f}; worker ms {stage}",
                    flush=True,
                )
                doc["cases"].append(
                    {
                        "model": folder,
                        "batch": batch,
                        "replicas": replicas,
                        "threads": threads,
                        "bare": bare,
                        "worker": worker,
                        "ratio": ratio,
                    }
                )
        finally:
            servers.stop()
    eff = {r[1]: r for r in rows if r[0] == "efficientnet_lite0" and r[3] == "1 x 2"}
    doc["efficientnet_batch8_over_batch1"] = {"bare": eff[8][4] / eff[1][4], "worker": eff[8][5] / eff[1][5]}
    print_table(
        f"inference on CPU, {len(jpegs)} vtest frames; medians of {repeats} alternating runs",
        [
            "model",
            "batch",
            "ORT threads",
            "workers x threads",
            "bare ORT frames/s (same threads)",
            "workers tasks/s (NATS+SeaweedFS+JPEG)",
            "ratio (goal SSD >= 0.9)",
        ],
        rows,
    )
    print(
        f"EfficientNet-Lite0 batch 8 over batch 1: bare x{doc['efficientnet_batch8_over_batch1']['bare']:.2f}, "
        f"worker x{doc['efficientnet_batch8_over_batch1']['worker']:.2f}"
    )
    write_result("workers", doc)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
