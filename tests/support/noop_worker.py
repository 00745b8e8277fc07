"""A real worker (NATS, Redis, SeaweedFS, heartbeats, acks) whose model does nothing but take its time.

Routing, load-balancing and failure tests use it so that what they measure is the work queue, not
ONNX Runtime. Run as a process: `python -m tests.support.noop_worker` (settings from the environment).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from services.worker.service import InferenceModel, InferenceWorker
from services.worker.settings import WorkerSettings
from shared.contracts import ModelKind
from shared.lifecycle import main


class NoopModel:
    def __init__(self, name: str, delay: float) -> None:
        self._name = name
        self.delay = delay

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> ModelKind:
        return ModelKind.DETECTION

    @property
    def version(self) -> str:
        return "0"

    def pixels_needed(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        return frame_size  # the full decode, as a worker's model with a large input

    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        return len(images)

    def run(self, batch: Any) -> Any:
        time.sleep(self.delay)  # stands for inference: it holds the worker as a real model would
        return batch

    def postprocess(
        self, outputs: Any, original_sizes: Sequence[tuple[int, int]], decoded_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[Any]:
        return [[] for _ in original_sizes]


class NoopSettings(WorkerSettings):
    service_name: str = "noop"
    model_dir: Path = Path(".")
    task_subject: str = "NoopInference"
    noop_model: str = Field(default="noop", description="the model name this worker serves")
    noop_delay_ms: float = Field(default=0.0, ge=0, description="time one batch takes")


class NoopWorker(InferenceWorker):
    name = "noop"

    def load_model(self) -> InferenceModel:
        settings = self.settings
        assert isinstance(settings, NoopSettings)
        return NoopModel(settings.noop_model, settings.noop_delay_ms / 1000)


if __name__ == "__main__":
    main(NoopWorker, NoopSettings)
