"""The worker's settings, and its roles: named sets of defaults (model folder, task subject, batch size).

A role is what `python -m services.detection` (or `services.worker --role detection`) runs. Any setting of a
role can still be set in the environment; a model of its own is a model folder and its own task subject.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo

from shared.settings import TaskQueueSettings


class WorkerSettings(TaskQueueSettings):
    model_dir: Path = Field(description="the model's folder (model.onnx, labels.txt, model.yaml)")
    task_subject: str = Field(description="the subject of the model's tasks")
    batch_size: int = Field(default=1, ge=1, le=64, description="tasks fetched and inferred together")
    # One thread each: a fleet scales a model by replicas (`make scale-workers`), and two workers that each took every
    # core of a 2-core machine spent 10 % more CPU per frame on their pools' hand-offs (docs/performance.md).
    intra_op_threads: int = Field(
        default=1, ge=0, description="onnxruntime threads per worker; 0 lets it take every core (a worker alone on its machine)"
    )
    ort_allow_spinning: bool = Field(default=False, description="let idle onnxruntime threads spin (faster only on idle cores)")
    providers: list[str] = Field(default_factory=list, description="onnxruntime providers in order; empty = best available")
    task_queue_cap: int = Field(default=1000, ge=1, description="most tasks queued for this model; the oldest go first")

    @model_validator(mode="after")
    def _another_model_has_its_own_subject(self) -> WorkerSettings:
        # A role's task subject belongs to the role's own model. Another model on it would declare a second task
        # stream on the same subject, which NATS refuses: the worker would fail at start with a less clear error.
        own_dir = type(self).model_fields["model_dir"].default
        if isinstance(own_dir, Path) and self.model_dir.name != own_dir.name and "task_subject" not in self.model_fields_set:
            raise ValueError(
                f"model_dir {self.model_dir} is not the {self.service_name} role's own model ({own_dir}): set its own "
                f"task_subject too (e.g. task_subject={self.model_dir.name}_tasks), so that its tasks get a queue of their own"
            )
        return self


def _role_default(name: str, value: Any) -> Any:
    """The base's field with the role's default: its description and bounds stay as they are."""
    return FieldInfo.merge_field_infos(WorkerSettings.model_fields[name], default=value)


class DetectionSettings(WorkerSettings):
    service_name: str = "detection"
    model_dir: Path = _role_default("model_dir", Path("models/ssd_mobilenet_v2_coco"))
    task_subject: str = _role_default("task_subject", "DetectionInference")
    # The SSD's batch dimension is fixed, so a batch runs frame by frame; but when frames queue, one pull, one
    # publish round trip and one thread hand-off serve 4 of them (docs/performance.md). An idle queue still
    # answers each frame at once: a pull returns what is there.
    batch_size: int = _role_default("batch_size", 4)


class ClassificationSettings(WorkerSettings):
    service_name: str = "classification"
    model_dir: Path = _role_default("model_dir", Path("models/efficientnet_lite0"))
    task_subject: str = _role_default("task_subject", "ClassificationInference")
    # EfficientNet-Lite0 has a dynamic batch dimension, so a batch costs less per frame.
    batch_size: int = _role_default("batch_size", 8)


# Role name -> its settings; the role's name is also its service name (logs, metrics, `python -m services.<role>`).
ROLES: dict[str, type[WorkerSettings]] = {
    cls.model_fields["service_name"].default: cls for cls in (DetectionSettings, ClassificationSettings)
}
