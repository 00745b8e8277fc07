"""The worker's roles: detection and classification are one service with two sets of defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.worker.cli import ROLE_VARIABLE, main
from services.worker.settings import ROLES, ClassificationSettings, DetectionSettings
from tests.support.settings import settings_from


def test_each_role_has_its_own_model_subject_and_batch() -> None:
    detection = settings_from(DetectionSettings)
    classification = settings_from(ClassificationSettings)
    assert set(ROLES) == {"detection", "classification"}
    assert (detection.service_name, detection.model_dir.name, detection.task_subject, detection.batch_size) == (
        "detection",
        "ssd_mobilenet_v2_coco",
        "DetectionInference",
        4,  # a fixed batch of 1 in the model, but one pull and one publish for the frames that queue
    )
    assert (classification.service_name, classification.model_dir.name, classification.task_subject) == (
        "classification",
        "efficientnet_lite0",
        "ClassificationInference",
    )
    assert classification.batch_size == 8  # a dynamic batch dimension: batching pays
    # A role's default keeps the base's bounds and description.
    with pytest.raises(ValidationError, match="batch_size"):
        settings_from(ClassificationSettings, batch_size=65)
    described = {cls.model_fields["batch_size"].description for cls in (DetectionSettings, ClassificationSettings)}
    assert described == {"tasks fetched and inferred together"}


def test_another_model_in_a_role_needs_its_own_task_subject(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the role's subject it would declare a second task stream over the same subject, which NATS refuses.
    with pytest.raises(ValidationError, match=r"model_dir models/yolov8n is not the detection role's own model.*task_subject"):
        settings_from(DetectionSettings, model_dir="models/yolov8n")
    own = settings_from(DetectionSettings, model_dir="models/yolov8n", task_subject="YoloInference")
    assert own.task_subject == "YoloInference"
    # Its own model elsewhere (a test's or an image's absolute path) keeps the role's subject.
    moved = settings_from(DetectionSettings, model_dir=Path("/opt/vigil/models/ssd_mobilenet_v2_coco"))
    assert moved.task_subject == "DetectionInference"
    # From the environment, as compose's `environment:` gives them.
    monkeypatch.setenv("model_dir", "models/yolov8n")
    monkeypatch.setenv("task_subject", "YoloInference")
    assert settings_from(DetectionSettings).task_subject == "YoloInference"


@pytest.mark.parametrize(
    ("argv", "env_role", "message"),
    [
        ([], None, "no role given: pass --role (detection, classification) or set worker_role"),
        (["--role", "segmentation"], None, "unknown role 'segmentation': pass --role (detection, classification)"),
        (["--check-config"], "segmentation", "unknown role 'segmentation'"),
    ],
)
def test_the_generic_worker_needs_a_known_role(
    argv: list[str], env_role: str | None, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ROLE_VARIABLE, raising=False)
    if env_role is not None:
        monkeypatch.setenv(ROLE_VARIABLE, env_role)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_the_generic_worker_runs_the_role_it_is_given(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ROLE_VARIABLE, raising=False)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    argv = ["--check-config", "--env-file", str(empty)]
    if how == "argument":
        argv = ["--role", "classification", *argv]
    else:
        monkeypatch.setenv(ROLE_VARIABLE, "classification")
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "configuration OK: ClassificationSettings" in capsys.readouterr().out
