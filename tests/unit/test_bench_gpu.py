"""bench.gpu on the CPU provider: what a GPU session will run in its few minutes on the device machine works here."""

from __future__ import annotations

from bench import gpu


def test_placement_reads_each_node_and_its_operator_from_the_profile() -> None:
    where = gpu.placement(gpu.load("ssd_mobilenet_v2_coco", "CPUExecutionProvider", 1), "CPUExecutionProvider")
    assert where["nodes"] == {"CPUExecutionProvider": sum(where["ops_by_provider"]["CPUExecutionProvider"].values())}
    # The int8 SSD is built of QLinearConv nodes: the operators a GPU provider may leave to the CPU.
    assert where["ops_by_provider"]["CPUExecutionProvider"]["QLinearConv"] > 50
    assert where["run_ms_by_provider"]["CPUExecutionProvider"] > 0


def test_worker_stages_and_bare_runs_are_timed_on_the_same_frames() -> None:
    model = gpu.load("efficientnet_lite0", "CPUExecutionProvider", 1)
    frames = gpu.decoded(model, gpu.frames(3))
    image, size = frames[0]
    assert (image.shape[1], image.shape[0]) == (384, 288) and size == (768, 576)  # decoded as the worker does
    assert [len(b) for b in gpu.batches(frames, 2)] == [2, 2]  # cycled: every batch full
    figures = gpu.bare_and_worker(model, frames, 2, 0.05)
    assert figures["bare_fps"] > 0 and figures["worker_fps"] > 0
    # Same frames counted per call on both sides: the same order of frames/s (wide: a loaded machine's timings swing).
    assert 0.2 < figures["ratio"] < 5


def test_a_process_group_sums_its_members() -> None:
    assert gpu.process_group("efficientnet_lite0", "CPUExecutionProvider", 2, 1, 0.2) > 0
