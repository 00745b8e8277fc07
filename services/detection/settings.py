from __future__ import annotations

from pathlib import Path

from shared.worker import WorkerSettings


class DetectionSettings(WorkerSettings):
    service_name: str = "detection"
    model_dir: Path = Path("models/ssd_mobilenet_v2_coco")
    task_subject: str = "DetectionInference"
