"""The workers' model pipeline on an execution provider (the GPU's: CUDA), next to bare ONNX Runtime on the same one.

Issue 19's GPU part. For each model and batch size, in one process, on frames of the sample video decoded as the
worker decodes them (shared.jpeg.decode_for):
- **bare**: `session.run` on one input batch made beforehand: inference alone, what ONNX Runtime gives;
- **worker**: the stages InferenceWorker._infer runs per batch: preprocess (resize, tensor), run, postprocess
  (boxes or labels in the frame's pixels).
The ratio worker/bare says what the worker's own stages cost around the model. Then a **process group**: N
processes each running the worker's stages at one batch size, started together, their frames/s summed (the goal:
1,000 detection frames/s through one GPU's worker group). The JPEG decode is not timed: on a GPU host it is CPU
work beside the GPU's (about 1 ms a frame on one core, `make bench-reduced-decode`).

Where each model's nodes ran is read from ONNX Runtime's own profile of one run, so a session that quietly falls
back to the CPU for some operators shows it (an int8 graph's QLinear operators, say).

    python -m bench.gpu                                  # CUDA; the device machine (docs/development.md)
    python -m bench.gpu --provider CPUExecutionProvider --batches 1,4 --processes 1,2 --seconds 2   # anywhere
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from bench.common import ROOT, print_table, write_result
from services.worker.onnx_model import LoadedModel, load_model
from shared.jpeg import Size, decode_for, encode_jpeg

VIDEO = ROOT / "video" / "vtest.mp4"
MODELS = {"ssd_mobilenet_v2_coco": "detection", "efficientnet_lite0": "classification"}
FRAMES = 64  # distinct frames, cycled through: batches up to 64 see no frame twice


def frames(count: int = FRAMES) -> list[np.ndarray]:
    # cv2's reader, not PyAV: the device machine's image has OpenCV and no PyAV (docs/development.md).
    video = cv2.VideoCapture(str(VIDEO))
    images = []
    while len(images) < count and (got := video.read())[0]:
        images.append(got[1])
    video.release()
    if not images:
        raise SystemExit(f"no frames read from {VIDEO}")
    return images


def providers_for(provider: str) -> list[str]:
    # ONNX Runtime runs what the provider cannot on the CPU; naming it keeps that fallback explicit.
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def load(name: str, provider: str, threads: int) -> LoadedModel:
    return load_model(ROOT / "models" / name, providers=providers_for(provider), intra_op_threads=threads)


Frame = tuple[np.ndarray, Size]  # as the worker has it: the decoded image, and the frame's own (width, height)


def decoded(model: LoadedModel, images: Sequence[np.ndarray]) -> list[Frame]:
    """The frames as the worker has them: JPEG-encoded as the reader stores them, decoded no larger than needed."""
    return [decode_for(encode_jpeg(image), model.pixels_needed) for image in images]


def batches(frames: list[Frame], size: int) -> list[list[Frame]]:
    """Full batches of `size` covering every frame at least once (cycling through them)."""
    total = -(-max(size, len(frames)) // size) * size
    cycled = (frames * (-(-total // len(frames))))[:total]
    return [cycled[i : i + size] for i in range(0, total, size)]


def worker_stages(model: LoadedModel, batch: list[Frame]) -> None:
    """What InferenceWorker._infer runs on a batch: preprocess, run, postprocess into the frames' pixels."""
    images = [image for image, _ in batch]
    outputs = model.run(model.preprocess(images))
    model.postprocess(outputs, [size for _, size in batch], [(i.shape[1], i.shape[0]) for i in images])


def timed(step: Any, seconds: float, per_call: int) -> float:
    """Frames/s of `step()` (which handles `per_call` frames), called for at least `seconds` after two warm-ups."""
    step()
    step()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or calls < 3:
        step()
        calls += 1
    return calls * per_call / elapsed


def bare_and_worker(model: LoadedModel, frames: list[Frame], size: int, seconds: float) -> dict[str, float]:
    groups = itertools.cycle(batches(frames, size))
    tensor = model.preprocess([image for image, _ in next(groups)])
    # A model with a fixed batch of 1 takes a batch frame by frame (LoadedModel.run); the bare loop does the same.

    def worker_step() -> None:
        worker_stages(model, next(groups))

    # Three rounds, bare and worker in turn, each a third of `seconds`: medians, and the median of the rounds' ratios.
    rounds = [(timed(lambda: model.run(tensor), seconds / 3, size), timed(worker_step, seconds / 3, size)) for _ in range(3)]
    return {
        "bare_fps": statistics.median(b for b, _ in rounds),
        "worker_fps": statistics.median(w for _, w in rounds),
        "ratio": statistics.median(w / b for b, w in rounds),
    }


def placement(model: LoadedModel, provider: str) -> dict[str, Any]:
    """Nodes and their run time per provider, from ONNX Runtime's profile (a session of its own) of a few runs of
    one batch-1 input."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(model.model_dir / model.spec.file), options, providers=providers_for(provider))
        tensor = model.preprocess(frames(1))
        for _ in range(3):
            session.run(None, {model.input_name: tensor})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, tuple[str, str]] = {}  # node -> (provider, operator)
    micros: Counter[str] = Counter()
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or "provider" not in args or not event.get("name", "").endswith("_kernel_time"):
            continue
        nodes[event["name"].removesuffix("_kernel_time")] = (args["provider"], args.get("op_name", "?"))
        micros[args["provider"]] += event.get("dur", 0)
    ops: dict[str, Counter[str]] = {}
    for where, op in nodes.values():
        ops.setdefault(where, Counter())[op] += 1
    return {
        "providers": model.providers,
        "nodes": dict(Counter(where for where, _ in nodes.values())),
        "run_ms_by_provider": {k: v / 1000 / 3 for k, v in micros.items()},
        "ops_by_provider": {k: dict(v.most_common()) for k, v in ops.items()},
    }


def _group_member(name: str, provider: str, size: int, seconds: float, start: Any, out: Any) -> None:
    model = load(name, provider, 1)
    groups = itertools.cycle(batches(decoded(model, frames()), size))
    worker_stages(model, next(groups))  # the first run allocates
    start.wait()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        worker_stages(model, next(groups))
        done += size
    out.put(done / (time.perf_counter() - started))


def process_group(name: str, provider: str, processes: int, size: int, seconds: float) -> float:
    """Summed frames/s of `processes` processes, each with its own session, started together."""
    ctx = mp.get_context("spawn")  # a CUDA context does not survive a fork
    start, out = ctx.Barrier(processes), ctx.Queue()
    members = [ctx.Process(target=_group_member, args=(name, provider, size, seconds, start, out)) for _ in range(processes)]
    for member in members:
        member.start()
    rates = [out.get(timeout=600) for _ in members]
    for member in members:
        member.join()
        if member.exitcode:
            raise RuntimeError(f"a {name} process of the group exited with {member.exitcode}")
    return sum(rates)


def preload_cuda() -> str:
    """Loads CUDA and cuDNN from the NVIDIA pip packages where ONNX Runtime can (1.19 and later), as the GPU image's
    own onnxruntime-gpu finds them; else the system's loader paths have to."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return "from the loader's paths (onnxruntime has no preload_dlls)"
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - reported: the session's own error then says what is missing
        # ONNX Runtime's documented fallback: a PyTorch built for the same CUDA loads the libraries on import.
        try:
            import torch  # type: ignore[import-not-found]  # noqa: F401 - only where the device has it
        except ImportError:
            return f"preload_dlls failed: {exc!r}"
        return f"preload_dlls failed ({exc!r}); loaded through PyTorch"
    return "preloaded from the NVIDIA pip packages"


def run(provider: str, sizes: list[int], groups: list[int], seconds: float, threads: int) -> dict[str, Any]:
    available = ort.get_available_providers()
    if provider not in available:
        raise SystemExit(f"{provider} is not available in this onnxruntime ({ort.__version__}): {available}")
    preloaded = preload_cuda() if provider != "CPUExecutionProvider" else "not needed"
    cases, placements, group_rows = [], {}, []
    for name, role in MODELS.items():
        model = load(name, provider, threads)
        placements[name] = placement(model, provider)
        decoded_frames = decoded(model, frames())
        for size in sizes:
            figures = bare_and_worker(model, decoded_frames, size, seconds)
            cases.append({"model": name, "role": role, "batch": size, "batching": model.supports_batching} | figures)
            print(f"{name} batch {size}: worker {figures['worker_fps']:.0f} frames/s, bare {figures['bare_fps']:.0f}", flush=True)
        best = max((c for c in cases if c["model"] == name), key=lambda c: c["worker_fps"])["batch"]
        for n in groups:
            fps = process_group(name, provider, n, best, seconds)
            group_rows.append({"model": name, "processes": n, "batch": best, "worker_fps": fps})
            print(f"{name}: {n} processes at batch {best}: {fps:.0f} frames/s", flush=True)
    return {
        "onnxruntime": ort.__version__,
        "provider": provider,
        "available_providers": available,
        "cuda_libraries": preloaded,
        "intra_op_threads": threads,
        "seconds_per_figure": seconds,
        "placement": placements,
        "cases": cases,
        "process_groups": group_rows,
        "detection_goal_fps": 1000,
        "detection_best_fps": max((g["worker_fps"] for g in group_rows if MODELS[g["model"]] == "detection"), default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", default="CUDAExecutionProvider")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes, comma-separated")
    parser.add_argument("--processes", default="1,2,4,8", help="process-group sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per figure (three rounds of bare and worker)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (CPU work) per session")
    parser.add_argument("--name", default="gpu", help="the JSON's name under bench/results/")
    args = parser.parse_args()
    doc = run(
        args.provider,
        [int(x) for x in args.batches.split(",")],
        [int(x) for x in args.processes.split(",")],
        args.seconds,
        args.threads,
    )
    print_table(
        f"worker stages vs bare onnxruntime {doc['onnxruntime']} on {doc['provider']}, frames/s",
        ["model", "batch", "batching", "bare", "worker", "worker/bare"],
        [
            [c["model"], c["batch"], "dynamic" if c["batching"] else "1 at a time", c["bare_fps"], c["worker_fps"], c["ratio"]]
            for c in doc["cases"]
        ],
    )
    print_table(
        "process groups (each process its own session), frames/s summed",
        ["model", "processes", "batch", "frames/s"],
        [[g["model"], g["processes"], g["batch"], g["worker_fps"]] for g in doc["process_groups"]],
    )
    for name, where in doc["placement"].items():
        ms = {k: round(v, 2) for k, v in where["run_ms_by_provider"].items()}
        print(f"{name}: nodes by provider {where['nodes']}, ms per run by provider {ms}, ops {where['ops_by_provider']}")
    best, goal = doc["detection_best_fps"], doc["detection_goal_fps"]
    print(f"detection: {best:.0f} frames/s at best, goal {goal}: {'met' if best >= goal else 'NOT met'}")
    write_result(args.name, doc)


if __name__ == "__main__":
    main()
