"""Settings per role: a service's own `<service>_<setting>` keys, and the stop on keys no service reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.router.settings import RouterSettings
from services.worker.settings import ClassificationSettings, DetectionSettings, WorkerSettings
from shared.settings import VigilSettings
from shared.settings_keys import check_keys

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["reader", "router", "detection", "classification", "registrator", "api", "notifier"]


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "test.env"
    path.write_text(text)
    return path


def check_config(service: str, path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Only what the test names: a developer's own VIGIL_* or <service>_* variables must not change the answer.
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "PYTHONPATH"}}
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--check-config", "--env-file", str(path)],
        cwd=ROOT,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("batch_size", "DETECTION_BATCH_SIZE", "CLASSIFICATION_BATCH_SIZE", "WORKER_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)


# -- values per service ------------------------------------------------------------------------------


def test_a_service_own_key_in_the_file_applies_to_that_service_only(tmp_path: Path) -> None:
    path = env_file(tmp_path, "batch_size=2\nDETECTION_BATCH_SIZE=4\nrouter_route_batch=7\n")
    assert DetectionSettings(_env_file=path).batch_size == 4  # type: ignore[call-arg]
    assert ClassificationSettings(_env_file=path).batch_size == 2  # type: ignore[call-arg]
    assert RouterSettings(_env_file=path).route_batch == 7  # type: ignore[call-arg]
    assert check_keys(path, {}) == []


def test_a_service_own_key_in_the_environment_wins_over_the_shared_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = env_file(tmp_path, "batch_size=2\n")
    monkeypatch.setenv("batch_size", "3")  # compose's per-service environment: still the shared key's way
    monkeypatch.setenv("CLASSIFICATION_BATCH_SIZE", "16")
    assert ClassificationSettings(_env_file=path).batch_size == 16  # type: ignore[call-arg]
    assert DetectionSettings(_env_file=path).batch_size == 3  # type: ignore[call-arg]
    # Its own key in the file still wins over the shared key in the environment: the more specific key wins.
    monkeypatch.delenv("CLASSIFICATION_BATCH_SIZE")
    path.write_text("batch_size=2\nclassification_batch_size=5\n")
    assert ClassificationSettings(_env_file=path).batch_size == 5  # type: ignore[call-arg]
    # A value given to the constructor wins over both.
    assert ClassificationSettings(_env_file=path, batch_size=6).batch_size == 6  # type: ignore[call-arg]


class RoleWorkerSettings(WorkerSettings):
    """A worker named by a role, as the worker service will be: the role is the more specific prefix."""

    service_name: str = "worker"
    role: str = "detection"


def test_the_prefix_comes_from_the_role_and_the_service_name(tmp_path: Path) -> None:
    path = env_file(tmp_path, "model_dir=.\ntask_subject=X\nWORKER_BATCH_SIZE=3\nDETECTION_BATCH_SIZE=4\n")
    assert RoleWorkerSettings(_env_file=path).batch_size == 4  # type: ignore[call-arg]
    assert RoleWorkerSettings(_env_file=path, role="classification").batch_size == 3  # type: ignore[call-arg]
    # The base class is no service: VIGIL_ is the tools' namespace, never a prefix of settings.
    path.write_text("VIGIL_LOG_LEVEL=DEBUG\n")
    assert VigilSettings(_env_file=path).log_level == "INFO"  # type: ignore[call-arg]


def test_metrics_are_served_on_loopback_by_default() -> None:
    settings = VigilSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.metrics_host == "127.0.0.1"
    assert settings.metrics_port == 0  # off until a port is given (make run gives each service a free one)


# -- keys no service reads -----------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_a_typo_in_the_file_stops_every_service_with_the_closest_key(service: str, tmp_path: Path) -> None:
    path = env_file(tmp_path, 'video_sorce=rtsp://camera/stream\nwatch_label=["car"]\nbatch_size=2\n')
    done = check_config(service, path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"unknown setting video_sorce in {path} (did you mean video_source?)" in done.stderr
    assert f"unknown setting watch_label in {path} (did you mean watch_labels?)" in done.stderr
    assert "batch_size" not in done.stderr  # a worker's setting: known to every service, as one .env feeds them all
    assert "rtsp://camera" not in done.stderr  # values are never echoed: they may be secrets


@pytest.mark.parametrize("service", ["reader", "registrator"])
def test_a_typo_in_the_environment_stops_every_service(service: str, tmp_path: Path) -> None:
    path = env_file(tmp_path, "")
    env = {"READER_VIDEO_SORCE": "x", "REGISTRATOR_WATCH_LABEL": '["car"]', "VIGIL_VIDEO_SORCE": "x", "VIGIL_ENV_FLE": ".env"}
    done = check_config(service, path, env)
    assert done.returncode == 2, done.stdout + done.stderr
    for line in (
        "unknown setting READER_VIDEO_SORCE in the environment (did you mean READER_VIDEO_SOURCE?)",
        "unknown setting REGISTRATOR_WATCH_LABEL in the environment (did you mean REGISTRATOR_WATCH_LABELS?)",
        "unknown setting VIGIL_VIDEO_SORCE in the environment (settings take no VIGIL_ prefix: did you mean VIDEO_SOURCE?)",
        "unknown setting VIGIL_ENV_FLE in the environment (did you mean VIGIL_ENV_FILE?)",
    ):
        assert line in done.stderr, done.stderr


def test_a_service_own_key_must_be_one_of_its_settings(tmp_path: Path) -> None:
    path = env_file(tmp_path, 'DETECTION_WATCH_LABELS=["car"]\nDETECTION_BATCH_SIZ=4\n')
    assert check_keys(path, {})[:2] == [
        f"unknown setting DETECTION_WATCH_LABELS in {path} (detection has no setting watch_labels; it is read by registrator)",
        f"unknown setting DETECTION_BATCH_SIZ in {path} (did you mean DETECTION_BATCH_SIZE?)",
    ]


def test_compose_variables_and_unrelated_environment_pass(tmp_path: Path) -> None:
    path = env_file(tmp_path, "COMPOSE_PROFILES=gpu\nCOMPOSE_FILE=docker-compose.yml\nVIGIL_API_PORT=8081\nTMP_PATH=x\n")
    environ = {"HOME": "/", "REDIS_URL": "x", "API_TOKEN": "x", "READER_TYPE": "av", "VIGIL_HEALTHZ_PORT_SETTINGS": "x"}
    assert check_keys(path, environ) == []


def test_a_missing_env_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "prod.env"
    done = check_config("router", missing)
    assert done.returncode == 2
    assert f"settings file {missing} (--env-file) not found" in done.stderr
    # An empty settings file that is no regular file is still one (the tests' and benchmarks' os.devnull).
    assert check_config("router", Path(os.devnull)).returncode == 0
