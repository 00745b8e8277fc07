from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.worker import WorkerSettings


class ClassificationSettings(WorkerSettings):
    service_name: str = "classification"
    model_dir: Path = Path("models/efficientnet_lite0")
    task_subject: str = "ClassificationInference"
    # EfficientNet-Lite0 has a dynamic batch dimension, so a batch costs less per frame.
    batch_size: int = Field(default=8, ge=1, le=64)
