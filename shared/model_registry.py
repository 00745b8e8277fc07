"""Model folders (model.onnx + labels.txt + model.yaml) -> checked, ready-to-run onnxruntime models.

Everything that can be wrong with a model folder is found at load time and raised as one ModelError whose
one-line message names the file, so a worker with a bad model fails at start, not on its first frame.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.contracts import Classification, Detection, ModelKind
from shared.vision import ADAPTERS, AdapterName, Geometry, InputSpec, PostParams, Results, geometry, image_size
from shared.vision import preprocess as _preprocess

log = logging.getLogger("vigil.models")

MANIFEST = "model.yaml"
DEFAULT_MODELS_ROOT = Path(__file__).resolve().parent.parent / "models"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_DTYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}


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


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:3]]
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts) + more


def load_spec(model_dir: Path) -> ModelSpec:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ModelError(f"model manifest not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read {path}: {_first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"invalid {path}: expected a mapping at the top level")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise ModelError(f"invalid {path}: {_short(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_labels(path: Path, spec: LabelsSpec) -> dict[int, str]:
    if not path.is_file():
        raise ModelError(f"labels file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file {path}: {_first_line(exc)}") from exc
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


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PREFERRED_PROVIDERS if p in available]
    missing = [p for p in requested if p not in available]
    if missing or not requested:
        raise ModelError(f"execution providers not available: {missing or '(none requested)'}; available: {available}")
    return list(requested)


class LoadedModel:
    """A checked model with its session. Thread-safe: onnxruntime allows concurrent run() on one session."""

    def __init__(self, spec: ModelSpec, labels: dict[int, str], session: ort.InferenceSession, model_dir: Path) -> None:
        self.spec = spec
        self.labels = labels
        self.session = session
        self.model_dir = model_dir
        self.providers: list[str] = session.get_providers()
        inp = session.get_inputs()[0]
        self.input_name: str = inp.name
        batch_dim = inp.shape[0]
        self.supports_batching: bool = not (isinstance(batch_dim, int) and batch_dim > 0)
        self._adapter = ADAPTERS[spec.output.adapter]
        self._post = PostParams(
            labels=labels,
            score_threshold=spec.score_threshold,
            top_k=spec.top_k,
            class_filter=frozenset(spec.class_filter) if spec.class_filter is not None else None,
            iou_threshold=spec.output.iou_threshold,
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> ModelKind:
        return self.spec.kind

    @property
    def version(self) -> str:
        return self.spec.version

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """BGR uint8 HxWx3 images -> one input batch."""
        return _preprocess(images, self.spec.input)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The raw outputs, each with a leading batch dimension of len(batch)."""
        if self.supports_batching or len(batch) == 1:
            return list(self.session.run(None, {self.input_name: batch}))
        runs = [self.session.run(None, {self.input_name: batch[i : i + 1]}) for i in range(len(batch))]
        return [np.concatenate([r[k] for r in runs], axis=0) for k in range(len(runs[0]))]

    def postprocess(self, outputs: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]]) -> Results:
        """original_sizes are (width, height) of the images given to preprocess, in the same order."""
        geoms: list[Geometry] = [geometry(size, self.spec.input) for size in original_sizes]
        return self._adapter.decode(outputs, geoms, self._post)

    def infer(self, images: Sequence[np.ndarray]) -> list[list[Detection]] | list[list[Classification]]:
        if not images:
            return []
        return self.postprocess(self.run(self.preprocess(images)), [image_size(im) for im in images])

    def __repr__(self) -> str:
        return f"LoadedModel({self.spec.name} v{self.spec.version}, {self.spec.kind.value}, {self.providers[0]})"


def load_model(
    model_dir: Path, *, providers: list[str] | None = None, intra_op_threads: int = 0, allow_spinning: bool = True
) -> LoadedModel:
    model_dir = Path(model_dir)
    spec = load_spec(model_dir)
    model_path = model_dir / spec.file
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    got = sha256_of(model_path)
    if got != spec.sha256:
        raise ModelError(f"sha256 mismatch for {model_path}: expected {spec.sha256}, got {got}")
    labels_path = model_dir / spec.labels.file
    labels = load_labels(labels_path, spec.labels)
    if spec.class_filter is not None:
        unknown = sorted(set(spec.class_filter) - set(labels.values()))
        if unknown:
            raise ModelError(f"class_filter in {model_dir / MANIFEST} names labels not in {labels_path}: {unknown}")

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, intra_op_threads)
    if not allow_spinning:
        # Idle ORT threads spin for work by default; beside other busy threads (a worker downloading and
        # decoding the next frames) that spinning takes the cores they need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = resolve_providers(providers)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions (Fail, InvalidGraph, ...)
        raise ModelError(f"onnxruntime cannot load {model_path}: {_first_line(exc)}") from exc
    _check_io(session, spec, model_path, labels)

    model = LoadedModel(spec, labels, session, model_dir)
    log.info(
        "model %s v%s (%s) runs on %s (providers %s, batching %s)",
        spec.name,
        spec.version,
        spec.kind.value,
        model.providers[0],
        ",".join(model.providers),
        "dynamic" if model.supports_batching else "off",
    )
    return model


def _check_io(session: ort.InferenceSession, spec: ModelSpec, model_path: Path, labels: dict[int, str]) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{model_path} has {len(inputs)} inputs; one image input is supported")
    inp, want = inputs[0], spec.input
    shape = list(inp.shape)
    expected = f"{want.layout} {want.height}x{want.width}x3 {want.dtype}"
    if len(shape) != 4:
        raise ModelError(f"input shape mismatch for {model_path}: model input is {shape}, manifest says {expected}")
    n, *rest = shape
    h, w, c = rest if want.layout == "NHWC" else (rest[1], rest[2], rest[0])

    def differs(dim: object, value: int) -> bool:  # symbolic or unknown dims accept anything
        return isinstance(dim, int) and dim > 0 and dim != value

    if differs(h, want.height) or differs(w, want.width) or differs(c, 3):
        raise ModelError(f"input shape mismatch for {model_path}: model input is {shape}, manifest says {expected}")
    if inp.type != _ORT_DTYPES[want.dtype]:
        raise ModelError(f"input dtype mismatch for {model_path}: model input is {inp.type}, manifest says {want.dtype}")
    if isinstance(n, int) and n > 1:
        raise ModelError(f"{model_path} has a fixed batch size of {n}; only 1 or dynamic is supported")

    outputs = session.get_outputs()
    adapter = ADAPTERS[spec.output.adapter]
    if len(outputs) < adapter.outputs:
        raise ModelError(f"{model_path} has {len(outputs)} outputs; adapter {spec.output.adapter} needs {adapter.outputs}")
    # Catch a labels file that belongs to another model: its class count shows in the output shape.
    out_shape = list(outputs[0].shape)
    classes = {
        "classification_logits": out_shape[-1] if out_shape else None,
        "classification_probs": out_shape[-1] if out_shape else None,
        "yolov8": out_shape[1] - 4 if len(out_shape) == 3 and isinstance(out_shape[1], int) else None,
    }.get(spec.output.adapter)
    if isinstance(classes, int) and classes > 0 and spec.labels.format == "lines" and classes != len(labels):
        raise ModelError(f"labels file {model_path.parent / spec.labels.file} has {len(labels)} classes, model outputs {classes}")


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
