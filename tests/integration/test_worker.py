import asyncio
import contextlib
import signal
import time
from pathlib import Path

import cv2
import pytest

from fleet.clients import connect_nats, redis_client
from fleet.processes import ServiceProcess, service_process
from fleet.servers import ServerSet
from services.worker.service import InferenceWorker
from services.worker.settings import DetectionSettings
from shared.bus import Bus
from shared.contracts import FrameRef, InferenceResult, InferenceTask
from shared.discovery import live_instances
from shared.jpeg import encode_jpeg
from shared.keys import RedisKeys
from shared.lifecycle import StartupError
from shared.metrics import Metrics, counter_value
from shared.settings import VigilSettings
from shared.storage import SeaweedStorage
from shared.subjects import results_stream
from tests.integration.helpers import running, wait_for
from tests.support.settings import MakeSettings, settings_from
from tests.support.weed import expire_frame


def vtest_frame(repo_root: Path, index: int = 10) -> bytes:
    cap = cv2.VideoCapture(str(repo_root / "video" / "vtest.mp4"))
    for _ in range(index + 1):
        ok, image = cap.read()
    cap.release()
    assert ok
    return encode_jpeg(image)


async def test_worker_detects_reports_errors_and_keeps_serving(
    service_env: dict[str, str], make_settings: MakeSettings, repo_root: Path, servers: ServerSet
) -> None:
    env = service_env | {"model_dir": str(repo_root / "models" / "ssd_mobilenet_v2_coco")}
    settings = settings_from(DetectionSettings, env)
    worker = InferenceWorker(settings)
    owner = Bus(make_settings(VigilSettings), "registrator", "t", Metrics("owner"))
    await owner.connect()
    await owner.ensure_stream(results_stream(owner.settings))  # the registrator's stream, as in the fleet
    watcher = await connect_nats(env)
    results = await watcher.subscribe(owner.subjects.results_all)
    redis = redis_client(settings)
    keys = RedisKeys(settings)
    try:
        async with SeaweedStorage(settings) as storage, running(worker, lambda w: w.processed >= 0 and w.model is not None):
            good = await storage.upload(vtest_frame(repo_root), ttl="5m")
            corrupt = await storage.upload(b"\xff\xd8 not really a jpeg", ttl="5m")
            gone = await storage.upload(b"expired", ttl="5m")
            await expire_frame(servers, gone)  # SeaweedFS then says 404, a final answer

            def task(seq: int, url: str) -> InferenceTask:
                ref = FrameRef(source_id="cam0", seq=seq, pts=seq / 10, wall_time=time.time(), url=url, width=768, height=576)
                return InferenceTask(frame=ref, model="ssd_mobilenet_v2_coco", routed_at=time.time())

            subject = owner.subjects.task(settings.task_subject)
            deadline = time.monotonic() + 60  # the worker declares its task stream during start, then beats
            while not (await live_instances(redis, keys)).get("ssd_mobilenet_v2_coco"):
                assert time.monotonic() < deadline, "the worker never said it was live"
                await asyncio.sleep(0.1)
            await owner.publish(subject, task(1, good))
            await owner.publish(subject, task(2, corrupt))
            await owner.publish(subject, task(3, "http://169.254.169.254/latest/meta-data"))
            await owner.js.publish(subject, b'{"v": 1, "frame": "nonsense"}')
            await owner.publish(subject, task(5, good))
            await owner.publish(subject, task(6, gone))
            got = {}
            for _ in range(5):
                result = InferenceResult.from_bytes((await results.next_msg(timeout=30)).data)
                got[result.frame.seq] = result
            assert sorted(got) == [1, 2, 3, 5, 6]
            persons = [d for d in got[1].detections if d.label == "person"]
            assert len(persons) >= 3 and all(0 <= d.box.x1 < d.box.x2 <= 1 for d in persons)
            assert got[1].error is None and got[1].timings.infer_ms > 0 and got[1].model_version == "1"
            for d in persons:  # pixels of the stored frame, and the same box normalised
                assert (d.box_px.x1, d.box_px.y1, d.box_px.x2, d.box_px.y2) == d.box.to_pixels(768, 576)
                assert 0 <= d.box_px.x1 < d.box_px.x2 <= 768 and 0 <= d.box_px.y1 < d.box_px.y2 <= 576
            assert "bad image" in (got[2].error or "") and not got[2].detections
            assert "frame unavailable" in (got[6].error or "") and "404" in (got[6].error or "")
            assert "not a configured SeaweedFS host" in (got[3].error or "")
            assert got[5].detections == got[1].detections  # still serving after the bad ones
            assert counter_value(worker.bus.dead_letters, subject=subject) == 1
            hb = (await live_instances(redis, keys))["ssd_mobilenet_v2_coco"][0]
            assert hb.subject == settings.task_subject and hb.kind.value == "detection"
            # error results count as processed: their tasks are answered (counted just after the result goes out)
            await wait_for(lambda: worker.processed == 5, 5, "five tasks answered")
        assert await live_instances(redis, keys) == {}  # removed on graceful stop, not left to the TTL
    finally:
        await redis.aclose()
        await watcher.close()
        await owner.close()


async def test_missing_model_is_a_clear_start_error(make_settings: MakeSettings, tmp_path: Path) -> None:
    settings = make_settings(DetectionSettings, model_dir=str(tmp_path / "absent"), task_subject="AbsentInference")
    with pytest.raises(StartupError, match=r"absent.*model\.yaml|model\.yaml.*absent"):
        await InferenceWorker(settings).execute()


# Each way to start a worker -> (its command line after `python -m`, its environment, its model, its task subject).
ENTRY_POINTS = {
    "detection": (["services.detection"], {}, "ssd_mobilenet_v2_coco", "DetectionInference"),
    "classification": (["services.classification"], {}, "efficientnet_lite0", "ClassificationInference"),
    "worker-role-argument": (["services.worker", "--role", "detection"], {}, "ssd_mobilenet_v2_coco", "DetectionInference"),
    "worker-role-environment": (
        ["services.worker"],
        {"worker_role": "classification"},
        "efficientnet_lite0",
        "ClassificationInference",
    ),
}


async def test_every_entry_point_starts_its_role_and_stops_cleanly(service_env: dict[str, str], tmp_path: Path) -> None:
    redis = redis_client(service_env)
    keys = RedisKeys(settings_from(VigilSettings, service_env))

    def output() -> str:
        return "\n".join(f"--- {name}:\n{''.join(p.tail)[-2000:]}" for name, p in procs.items())

    procs: dict[str, ServiceProcess] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for name, (command, env, _, _) in ENTRY_POINTS.items():
                module, *args = command
                # No worker_role from the caller's environment: each process gets only its own.
                own = service_env | {"worker_role": "", "intra_op_threads": "1", "instance": name} | env
                procs[name] = await stack.enter_async_context(service_process(module, own, args=args, name=name))
            expected = {(model, name, subject) for name, (_, _, model, subject) in ENTRY_POINTS.items()}
            serving: set[tuple[str, str, str]] = set()
            deadline = time.monotonic() + 90
            while serving != expected:  # each one's heartbeat: started, with its role's model and subject
                exited = {name: p.returncode for name, p in procs.items() if p.returncode is not None}
                assert not exited and time.monotonic() < deadline, f"missing {expected - serving}; exited {exited}\n{output()}"
                await asyncio.sleep(0.2)
                live = await live_instances(redis, keys)
                serving = {(model, hb.instance, hb.subject) for model, beats in live.items() for hb in beats}
            for process in procs.values():
                process.signal(signal.SIGTERM)
            codes = {name: await asyncio.wait_for(p.wait(), 30) for name, p in procs.items()}
            assert codes == dict.fromkeys(ENTRY_POINTS, 0), output()
        assert await live_instances(redis, keys) == {}  # each removed its heartbeat on the way out
    finally:
        await redis.aclose()


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
async def test_every_entry_point_names_a_missing_model_file(name: str, tmp_path: Path) -> None:
    # The model is loaded before any connection is made, so no servers are needed to see this error.
    command, env, model, _ = ENTRY_POINTS[name]
    module, *args = command
    folder = tmp_path / model  # named as the role's own model, but empty
    folder.mkdir()
    own = {"worker_role": "", "model_dir": str(folder)} | env
    async with service_process(module, own, args=args) as process:
        code = await asyncio.wait_for(process.wait(), 60)
    text = "".join(process.tail)
    assert code == 1, text
    assert f"model manifest not found: {folder / 'model.yaml'}" in text, text
    assert "Traceback" not in text, text
