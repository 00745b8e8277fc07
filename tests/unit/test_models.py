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
from services.worker.preprocess import InputSpec, geometry, pixels_needed, preprocess, to_tensor
from shared.contracts import Classification, Detection, ModelKind
from shared.jpeg import decode_for, decode_jpeg, encode_jpeg

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


def _sample_frames(every: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(ROOT / "video" / "vtest.mp4"))
    frames: list[np.ndarray] = []
    try:
        index = 0
        while (got := cap.read())[0]:
            if index % every == 0:
                frames.append(got[1])
            index += 1
    finally:
        cap.release()
    assert frames, "cannot decode video/vtest.mp4"
    return frames


def _iou(a: Detection, b: Detection) -> float:
    ix = max(0, min(a.box_px.x2, b.box_px.x2) - max(a.box_px.x1, b.box_px.x1))
    iy = max(0, min(a.box_px.y2, b.box_px.y2) - max(a.box_px.y1, b.box_px.y1))
    inter = ix * iy
    area = (a.box_px.x2 - a.box_px.x1) * (a.box_px.y2 - a.box_px.y1) + (b.box_px.x2 - b.box_px.x1) * (b.box_px.y2 - b.box_px.y1)
    return inter / (area - inter)


@pytest.mark.parametrize("scale", [2, 1])
def test_reduced_decode_finds_the_full_decodes_boxes_in_frame_pixels(ssd: LoadedModel, scale: int) -> None:
    # The sample video's frames at their own size (768x576) and at twice it: each is decoded at 384x288 for SSD's
    # 300x300 (1/2 and 1/4), 288 rows being within the decoder's upscale slack. The boxes must come out in the full
    # frame's pixels, as from the full decode: same labels, and corners within a pixel or two of the model's input
    # (one input pixel is 2.6 or 5.1 frame pixels).
    width, height = 768 * scale, 576 * scale
    input_px = width / ssd.spec.input.width
    gaps: list[float] = []
    for frame in _sample_frames(every=100):
        jpeg = encode_jpeg(cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR), 85)
        image, size = decode_for(jpeg, ssd.pixels_needed)
        assert image.shape == (288, 384, 3) and size == (width, height)
        [reduced] = ssd.postprocess(ssd.run(ssd.preprocess([image])), [size], [(384, 288)])
        [full] = ssd.infer([decode_jpeg(jpeg)])
        sure = [d for d in full if isinstance(d, Detection) and d.score >= 0.6]  # not those at the threshold's edge
        assert sure, "the sample frames have people in them"
        for det in sure:
            match = max((d for d in reduced if isinstance(d, Detection)), key=lambda d: _iou(det, d))
            assert match.label == det.label and _iou(det, match) > 0.5
            a, b = det.box_px, match.box_px
            gaps += [abs(a.x1 - b.x1), abs(a.y1 - b.y1), abs(a.x2 - b.x2), abs(a.y2 - b.y2)]
    assert float(np.median(gaps)) <= 1 * input_px
    assert float(np.percentile(gaps, 90)) <= 2 * input_px


def test_reduced_decode_keeps_a_clear_classification(effnet: LoadedModel) -> None:
    # Twice the photo's size: EfficientNet's 256-pixel short side fits in half of it, so it is decoded at 1/2.
    photo = _photo("squirrel_cls.jpg")
    jpeg = encode_jpeg(cv2.resize(photo, (photo.shape[1] * 2, photo.shape[0] * 2)), 90)
    image, size = decode_for(jpeg, effnet.pixels_needed)
    assert (image.shape[1], image.shape[0]) == (photo.shape[1], photo.shape[0])
    assert size == (photo.shape[1] * 2, photo.shape[0] * 2)
    [reduced] = effnet.postprocess(effnet.run(effnet.preprocess([image])), [size], [(image.shape[1], image.shape[0])])
    [full] = effnet.infer([decode_jpeg(jpeg)])
    assert reduced[0].label == full[0].label == "fox squirrel" and reduced[0].score > 0.8
    # Half of this 535x426 photo has 213 rows, far short of SSD's 300: it is decoded whole for it.
    assert decode_for(encode_jpeg(photo), lambda s: (300, 300))[0].shape == photo.shape


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


@pytest.mark.parametrize(
    "spec",
    [
        InputSpec(layout="NHWC", dtype="uint8", width=300, height=300),
        InputSpec(layout="NCHW", dtype="float32", width=224, height=224, resize="resize_crop", resize_short=256),
        InputSpec(layout="NCHW", dtype="float32", width=320, height=320, resize="letterbox", std=255.0),
    ],
    ids=["stretch", "resize_crop", "letterbox"],
)
@pytest.mark.parametrize("original", [(1536, 1152), (1001, 751), (3840, 2160)])
def test_reduced_decode_geometry_maps_to_the_full_frame(spec: InputSpec, original: tuple[int, int]) -> None:
    # The same input pixels mapped back through the reduced image's geometry land within a pixel of where the full
    # image's geometry puts them, in the full frame's pixels (odd sizes round up in the reduced decode).
    full = geometry(original, spec)
    for reduction in (2, 4, 8):
        decoded = (-(-original[0] // reduction), -(-original[1] // reduction))
        reduced = geometry(original, spec, decoded)
        assert reduced.original == original and reduced.input == full.input
        xs, ys = np.meshgrid(np.linspace(0, spec.width, 7), np.linspace(0, spec.height, 7))
        fx, fy = full.to_original(xs, ys)
        rx, ry = reduced.to_original(xs, ys)
        assert np.abs(fx - rx).max() * original[0] <= 1.0 + reduction / 2
        assert np.abs(fy - ry).max() * original[1] <= 1.0 + reduction / 2


def test_pixels_needed_is_the_size_before_padding_or_cropping() -> None:
    crop = InputSpec(layout="NCHW", dtype="float32", width=224, height=224, resize="resize_crop", resize_short=256)
    assert pixels_needed((768, 576), crop) == (341, 256)
    assert pixels_needed((768, 576), InputSpec(layout="NHWC", dtype="uint8", width=300, height=300)) == (300, 300)
    assert pixels_needed((1280, 720), YOLO_SPEC) == (640, 360)


@pytest.mark.parametrize(
    "spec",
    [
        InputSpec(layout="NHWC", dtype="uint8", width=30, height=20),
        InputSpec(layout="NCHW", dtype="float32", width=30, height=20, mean=127.0, std=128.0),
        InputSpec(layout="NHWC", dtype="float32", width=30, height=20, color="BGR", mean=(1, 2, 3), std=(2, 4, 8)),
        InputSpec(layout="NCHW", dtype="uint8", width=30, height=20, color="BGR"),
    ],
    ids=["ssd", "effnet", "nhwc-float-bgr", "nchw-uint8-bgr"],
)
def test_tensor_has_the_networks_colours_layout_and_values(spec: InputSpec) -> None:
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]
    batch = to_tensor(images, spec)
    # What it must equal, written plainly: colour order, then (x - mean) / std per channel, then the layout.
    want = np.stack(images)[..., ::-1] if spec.color == "RGB" else np.stack(images)
    if spec.dtype == "float32":
        want = (want.astype(np.float64) - np.asarray(spec.mean)) / np.asarray(spec.std)
    if spec.layout == "NCHW":
        want = want.transpose(0, 3, 1, 2)
    assert batch.dtype == np.dtype(spec.dtype) and batch.flags["C_CONTIGUOUS"]
    assert batch.shape == want.shape and np.allclose(batch, want, atol=1e-5)


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
