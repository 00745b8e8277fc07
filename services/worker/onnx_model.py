"""A checked model folder -> a ready-to-run onnxruntime model (`LoadedModel`).

The network is checked against its manifest (hash, input shape and dtype, outputs, class count) at load time;
any mismatch is one ModelError whose one-line message names the file, so a worker with a bad model fails at
start, not on its first frame.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.worker.adapters import ADAPTERS, PostParams, Results
from services.worker.manifest import MANIFEST, ModelError, ModelSpec, first_line, load_labels, load_spec
from services.worker.preprocess import Geometry, Size, geometry, image_size, pixels_needed
from services.worker.preprocess import preprocess as _preprocess
from shared.contracts import Classification, Detection, ModelKind

log = logging.getLogger("vigil.models")

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_DTYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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

    def pixels_needed(self, frame_size: Size) -> Size:
        """The (width, height) a frame of `frame_size` is resized to for this model: a reduced decode must give
        this, less shared.jpeg.UPSCALE_SLACK (see decode_for); the preprocess then shrinks it, or barely enlarges it."""
        return pixels_needed(frame_size, self.spec.input)

    def postprocess(
        self, outputs: Sequence[np.ndarray], original_sizes: Sequence[Size], decoded_sizes: Sequence[Size] | None = None
    ) -> Results:
        """original_sizes: (width, height) of the frames, in the order given to preprocess; the boxes come out in
        their pixels. decoded_sizes: those of the images preprocess was given, where they were decoded smaller."""
        decoded = decoded_sizes or original_sizes
        if len(decoded) != len(original_sizes):
            raise ValueError(f"{len(original_sizes)} frame sizes but {len(decoded)} decoded sizes")
        geoms: list[Geometry] = [geometry(o, self.spec.input, d) for o, d in zip(original_sizes, decoded, strict=True)]
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
        raise ModelError(f"onnxruntime cannot load {model_path}: {first_line(exc)}") from exc
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
