"""Model registry and pre/postprocessing, on the bundled models and real photos (no network)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from services.worker.adapters import PostParams, decode_yolov8
from services.worker.manifest import DEFAULT_MODELS_ROOT, ModelError, discover_models, load_spec
from services.worker.onnx_model import LoadedModel, load_model
from services.worker.preprocess import InputSpec, geometry, preprocess
from shared.contracts import Classification, Detection, ModelKind

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DATA = ROOT / "tests" / "data"
SSD = MODELS / "ssd_mobilenet_v2_coco"
EFFNET = MODELS / "efficientnet_lite0"


def _photo(name: str) -> np.ndarray:
    image = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {name}"
    return image


@pytest.fixture(scope="module")
def ssd() -> LoadedModel:
    return load_model(SSD, intra_op_threads=2)


@pytest.fixture(scope="module")
def effnet() -> LoadedModel:
    return load_model(EFFNET, intra_op_threads=2)


def _in_unit_square(d: Detection) -> bool:
    b = d.box
    return 0 <= b.x1 < b.x2 <= 1 and 0 <= b.y1 < b.y2 <= 1


# ---------------------------------------------------------------- real models


def test_ssd_finds_dog_bicycle_car(ssd: LoadedModel) -> None:
    [dets] = ssd.infer([_photo("dog.jpg")])
    labels = {d.label for d in dets}
    assert {"dog", "bicycle", "car"} <= labels
    assert all(isinstance(d, Detection) and _in_unit_square(d) for d in dets)
    assert not ssd.supports_batching  # the TFLite graph fixes the batch to 1
    # The dog sits in the lower left of the photo; a box in the wrong frame of reference would not.
    dog = next(d for d in dets if d.label == "dog")
    assert dog.box.x2 < 0.6 and dog.box.y2 > 0.7


def test_ssd_finds_people_in_sample_video(ssd: LoadedModel) -> None:
    video = ROOT / "video" / "vtest.mp4"
    cap = cv2.VideoCapture(str(video))
    try:
        # Decode sequentially: seeking by frame number in H.264 is not exact with every backend.
        for _ in range(11):
            ok, frame = cap.read()
            assert ok, f"cannot decode {video}"
    finally:
        cap.release()
    [dets] = ssd.infer([frame])
    people = [d for d in dets if d.label == "person"]
    assert len(people) >= 3
    assert all(_in_unit_square(d) for d in dets)


def test_ssd_runs_several_images_one_by_one(ssd: LoadedModel) -> None:
    dog, person = _photo("dog.jpg"), _photo("person.jpg")
    together = ssd.infer([dog, person])
    assert together == [ssd.infer([dog])[0], ssd.infer([person])[0]]
    assert {"person", "horse"} <= {d.label for d in together[1]}


def test_effnet_top1_squirrel(effnet: LoadedModel) -> None:
    [classes] = effnet.infer([_photo("squirrel_cls.jpg")])
    assert classes and all(isinstance(c, Classification) for c in classes)
    assert classes[0].label == "fox squirrel"
    assert classes[0].score > 0.5
    assert len(classes) <= effnet.spec.top_k
    assert [c.score for c in classes] == sorted((c.score for c in classes), reverse=True)


def test_effnet_batched_equals_one_by_one(effnet: LoadedModel) -> None:
    images = [_photo(n) for n in ("squirrel_cls.jpg", "dog.jpg", "person.jpg")]
    assert effnet.supports_batching
    batched = effnet.infer(images)
    single = [effnet.infer([im])[0] for im in images]
    assert len(batched) == len(single) == 3
    for b, s in zip(batched, single, strict=True):
        assert [c.label for c in b] == [c.label for c in s]
        assert np.allclose([c.score for c in b], [c.score for c in s], atol=1e-4)


def test_stages_compose_to_infer(effnet: LoadedModel) -> None:
    image = _photo("squirrel_cls.jpg")
    batch = effnet.preprocess([image])
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == np.float32
    outputs = effnet.run(batch)
    assert outputs[0].shape == (1, 1000)
    assert effnet.postprocess(outputs, [(image.shape[1], image.shape[0])]) == effnet.infer([image])
    assert effnet.infer([]) == []


def test_discover_finds_bundled_models() -> None:
    found = discover_models(MODELS)
    assert found == {"ssd_mobilenet_v2_coco": SSD, "efficientnet_lite0": EFFNET}
    assert DEFAULT_MODELS_ROOT == MODELS
    assert load_spec(SSD).kind is ModelKind.DETECTION
    assert load_spec(EFFNET).kind is ModelKind.CLASSIFICATION


# ---------------------------------------------------------------- preprocessing geometry


def test_letterbox_preprocess_pads_and_keeps_aspect() -> None:
    spec = InputSpec(layout="NCHW", dtype="float32", width=640, height=640, resize="letterbox", std=255.0)
    image = np.full((480, 640, 3), 255, dtype=np.uint8)
    batch = preprocess([image], spec)
    assert batch.shape == (1, 3, 640, 640)
    assert np.allclose(batch[0, :, :80, :], 114 / 255)  # top border
    assert np.allclose(batch[0, :, 80:560, :], 1.0)
    assert np.allclose(batch[0, :, 560:, :], 114 / 255)


def test_resize_crop_geometry() -> None:
    spec = InputSpec(layout="NCHW", dtype="float32", width=224, height=224, resize="resize_crop", resize_short=256)
    g = geometry((768, 576), spec)
    assert g.resized == (341, 256)
    assert (g.offset_x, g.offset_y) == (-58, -16)
    image = np.zeros((576, 768, 3), dtype=np.uint8)
    image[:, :, 2] = 200  # red in BGR: must land in channel 0 of an RGB tensor
    batch = preprocess([image], spec)
    assert batch.shape == (1, 3, 224, 224)
    assert np.allclose(batch[0, 0], 200.0) and np.allclose(batch[0, 1:], 0.0)


# ---------------------------------------------------------------- YOLOv8 decoder on built tensors


def _yolo_tensor(rows: list[tuple[float, float, float, float, int, float]], nc: int = 3) -> np.ndarray:
    """rows of (cx, cy, w, h, class, score) in input pixels -> Ultralytics [1, 4+nc, N]."""
    out = np.zeros((1, 4 + nc, len(rows)), dtype=np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    return out


YOLO_SPEC = InputSpec(layout="NCHW", dtype="float32", width=640, height=640, resize="letterbox", std=255.0)
YOLO_LABELS = {0: "person", 1: "car", 2: "dog"}


def test_yolov8_nms_keeps_one_of_two_overlapping_boxes() -> None:
    tensor = _yolo_tensor(
        [
            (320, 320, 100, 100, 1, 0.9),
            (325, 322, 100, 100, 1, 0.8),  # same car, IoU ~0.9: suppressed
            (322, 320, 100, 100, 2, 0.7),  # other class at the same place: NMS is class-wise, kept
            (100, 100, 40, 40, 0, 0.2),  # below threshold
        ]
    )
    params = PostParams(labels=YOLO_LABELS, score_threshold=0.25, iou_threshold=0.45)
    [dets] = decode_yolov8([tensor], [geometry((640, 640), YOLO_SPEC)], params)
    assert [(d.label, round(d.score, 2)) for d in dets] == [("car", 0.9), ("dog", 0.7)]


def test_yolov8_undoes_letterbox_for_non_square_image() -> None:
    # 640x480 letterboxed into 640x640: scale 1, 80 px border on top.
    tensor = _yolo_tensor([(320, 320, 100, 100, 0, 0.9)])
    params = PostParams(labels=YOLO_LABELS, score_threshold=0.25)
    [dets] = decode_yolov8([tensor], [geometry((640, 480), YOLO_SPEC)], params)
    [d] = dets
    assert d.label == "person" and d.class_id == 0
    assert (d.box.x1, d.box.y1, d.box.x2, d.box.y2) == pytest.approx((270 / 640, 190 / 480, 370 / 640, 290 / 480))
    # A portrait 480x960 image: scale 2/3, 160 px border left and right.
    [[d]] = decode_yolov8([tensor], [geometry((480, 960), YOLO_SPEC)], params)
    assert (d.box.x1, d.box.y1, d.box.x2, d.box.y2) == pytest.approx(
        ((270 - 160) * 1.5 / 480, 270 * 1.5 / 960, (370 - 160) * 1.5 / 480, 370 * 1.5 / 960)
    )


def test_yolov8_clips_and_filters() -> None:
    tensor = _yolo_tensor([(10, 320, 100, 100, 0, 0.9), (400, 400, 50, 50, 2, 0.8)])
    params = PostParams(labels=YOLO_LABELS, score_threshold=0.25, class_filter=frozenset({"person"}))
    [[d]] = decode_yolov8([tensor], [geometry((640, 640), YOLO_SPEC)], params)
    assert d.label == "person" and d.box.x1 == 0.0


# ---------------------------------------------------------------- broken model folders


def _model_copy(tmp_path: Path, src: Path = SSD, **changes: object) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    manifest = yaml.safe_load((dst / "model.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    (dst / "model.yaml").write_text(yaml.safe_dump(manifest))
    return dst


def test_wrong_sha256(tmp_path: Path) -> None:
    model_dir = _model_copy(tmp_path, sha256="0" * 64)
    with pytest.raises(ModelError, match=r"sha256 mismatch for .*model\.onnx: expected 0{64}, got 2137a9d7"):
        load_model(model_dir)


def test_missing_labels_file(tmp_path: Path) -> None:
    model_dir = _model_copy(tmp_path)
    (model_dir / "labels.txt").unlink()
    with pytest.raises(ModelError, match=r"labels file not found: .*labels\.txt"):
        load_model(model_dir)
    (model_dir / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model file not found: .*model\.onnx"):
        load_model(model_dir)


def test_input_shape_not_matching_manifest(tmp_path: Path) -> None:
    model_dir = _model_copy(tmp_path, input={"width": 224, "height": 224})
    with pytest.raises(ModelError, match=r"input shape mismatch for .*model\.onnx: model input is \[1, 300, 300, 3\]"):
        load_model(model_dir)
    model_dir = _model_copy(tmp_path / "layout", input={"layout": "NCHW"})
    with pytest.raises(ModelError, match="input shape mismatch"):
        load_model(model_dir)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "classification"}, r"adapter ssd_postprocessed produces detection"),
        ({"output": {"adapter": "nope"}}, r"output\.adapter"),
        ({"surprise": 1}, r"surprise: Extra inputs are not permitted"),
        ({"file": "../model.onnx"}, r"file: .*relative to the model folder"),
        ({"input": {"mean": 127.0}}, r"mean/std apply to float32 input only"),
        ({"class_filter": ["persn"]}, r"class_filter .* names labels not in .*: \['persn'\]"),
    ],
)
def test_invalid_manifest(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    model_dir = _model_copy(tmp_path, **changes)
    with pytest.raises(ModelError, match=message) as info:
        load_model(model_dir)
    assert "\n" not in str(info.value)
    assert str(model_dir) in str(info.value)


def test_labels_of_another_model_are_caught(tmp_path: Path) -> None:
    model_dir = _model_copy(tmp_path, EFFNET)
    (model_dir / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(ModelError, match=r"has 2 classes, model outputs 1000"):
        load_model(model_dir)


def test_missing_manifest_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model manifest not found: .*model\.yaml"):
        load_model(tmp_path)
    shutil.copytree(SSD, tmp_path / "ssd_v1")
    shutil.copytree(SSD, tmp_path / "ssd_v2")
    with pytest.raises(ModelError, match="model name 'ssd_mobilenet_v2_coco' is declared by both"):
        discover_models(tmp_path)


def test_unavailable_provider() -> None:
    with pytest.raises(ModelError, match="execution providers not available: \\['NoSuchExecutionProvider'\\]"):
        load_model(SSD, providers=["NoSuchExecutionProvider"])
