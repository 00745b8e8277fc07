"""Model folders: `model.yaml` (the manifest), the labels file, and the models folder that holds them.

A model folder is `models/<name>/` with `model.yaml`, the network (`model.onnx`) and its labels. Everything
that can be wrong with the manifest or the labels is found here and raised as one ModelError whose one-line
message names the file; services.worker.onnx_model then checks the network against them.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.worker.adapters import ADAPTERS, AdapterName
from services.worker.preprocess import InputSpec
from shared.contracts import ModelKind
from shared.validation import describe_errors

MANIFEST = "model.yaml"
DEFAULT_MODELS_ROOT = Path(__file__).resolve().parents[2] / "models"


class ModelError(RuntimeError):
    """A model folder that cannot be used; the message is one line and names the offending file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative(value: str) -> str:
    # Manifests may come from users: keep every referenced file inside the model's own folder.
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a plain path relative to the model folder")
    return value


class OutputSpec(_Strict):
    adapter: AdapterName
    iou_threshold: float = Field(default=0.45, gt=0, le=1, description="NMS IoU for adapters that run NMS (yolov8)")


class LabelsSpec(_Strict):
    file: str
    format: Literal["id_label", "lines"] = Field(description="'id label' lines (ids may have gaps) or one name a line")
    # ImageNet lines list synonyms ("fox squirrel, eastern fox squirrel, Sciurus niger"); events want the first.
    first_name_only: bool = False

    @field_validator("file")
    @classmethod
    def _file_relative(cls, value: str) -> str:
        return _relative(value)


class ModelSpec(_Strict):
    """A parsed model.yaml."""

    # YAML reads `version: 1` as an int; a version is a name, not a number.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="also used in subjects and keys")
    version: str = Field(min_length=1)
    kind: ModelKind
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: InputSpec
    output: OutputSpec
    labels: LabelsSpec
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    top_k: int = Field(default=5, ge=1, description="classification: how many classes to report")
    class_filter: list[str] | None = Field(default=None, description="labels to keep; None keeps all")
    provenance: str = ""

    @field_validator("file")
    @classmethod
    def _file_relative(cls, value: str) -> str:
        return _relative(value)

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _adapter_fits_kind(self) -> ModelSpec:
        adapter_kind = ADAPTERS[self.output.adapter].kind
        if adapter_kind != self.kind:
            raise ValueError(f"adapter {self.output.adapter} produces {adapter_kind.value}, but kind is {self.kind.value}")
        return self


def load_spec(model_dir: Path) -> ModelSpec:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ModelError(f"model manifest not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read {path}: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"invalid {path}: expected a mapping at the top level")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise ModelError(f"invalid {path}: {describe_errors(exc, limit=3)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_labels(path: Path, spec: LabelsSpec) -> dict[int, str]:
    if not path.is_file():
        raise ModelError(f"labels file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file {path}: {first_line(exc)}") from exc
    labels: dict[int, str] = {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if spec.format == "lines":
            # Line order is the class id, so a blank line would silently shift every class after it.
            if not line:
                raise ModelError(f"labels file {path}: line {lineno} is empty")
            cid, name = lineno - 1, line
        else:
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise ModelError(f"labels file {path}: line {lineno} is not 'id label': {line[:60]!r}")
            cid, name = int(parts[0]), parts[1].strip()
            if cid in labels:
                raise ModelError(f"labels file {path}: id {cid} appears twice (line {lineno})")
        labels[cid] = name.split(",")[0].strip() if spec.first_name_only else name
    if not labels:
        raise ModelError(f"labels file {path} is empty")
    return labels


def discover_models(models_root: Path = DEFAULT_MODELS_ROOT) -> dict[str, Path]:
    """Model name -> folder, for every <models_root>/*/model.yaml. Invalid manifests raise, never vanish silently."""
    root = Path(models_root)
    if not root.is_dir():
        raise ModelError(f"models folder not found: {root}")
    found: dict[str, Path] = {}
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        spec = load_spec(manifest.parent)
        if spec.name in found:
            raise ModelError(f"model name {spec.name!r} is declared by both {found[spec.name]} and {manifest.parent}")
        found[spec.name] = manifest.parent
    return found
