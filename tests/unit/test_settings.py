import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.registrator.settings import RegistratorSettings
from services.router.settings import RouterSettings
from services.worker.settings import ROLES, WorkerSettings
from shared.settings import VigilSettings
from shared.settings_keys import PROJECT_VARIABLES, check_keys
from shared.subjects import frames_stream, results_stream, task_stream
from shared.ttl import parse_ttl
from tests.support.settings import settings_from

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
# `key=value`, or `# key=value` for a documented key left unset (its default applies).
ENV_KEY = re.compile(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=")
# Each class names its own service; one .env feeds every service, so setting it there would rename them all.
NOT_IN_ENV_EXAMPLE = {"service_name"}
# Read by `docker compose` from .env, not by the services: its own COMPOSE_*, and the VIGIL_* variables
# that the compose files interpolate.
COMPOSE_OWN_KEYS = {"COMPOSE_FILE", "COMPOSE_PROFILES"}
# The api's own settings, which .env.example documents.
API_KEYS = {"api_host", "api_port", "api_token", "api_cors_origins", "api_page_limit", "api_clip_max_mb"}


def env_example_keys() -> set[str]:
    return {m.group(1) for line in ENV_EXAMPLE.read_text().splitlines() if (m := ENV_KEY.match(line.strip()))}


def compose_variables() -> set[str]:
    """The ${VARIABLES} the compose files interpolate."""
    return {v for f in ROOT.glob("docker-compose*.yml") for v in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", f.read_text())}


def settings_classes() -> set[type[VigilSettings]]:
    """VigilSettings and every subclass that a service's settings module defines or imports."""
    classes: set[type[VigilSettings]] = {VigilSettings, WorkerSettings}
    for path in sorted((ROOT / "services").glob("*/settings.py")):
        module = importlib.import_module(f"services.{path.parent.name}.settings")
        classes |= {obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, VigilSettings)}
    return classes


def setting_names() -> set[str]:
    """Every setting any service reads, lower-cased: pydantic-settings matches names case-insensitively."""
    return {name.lower() for cls in settings_classes() for name in cls.model_fields}


@pytest.mark.parametrize(("ttl", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800)])
def test_ttl(ttl: str, seconds: int) -> None:
    assert parse_ttl(ttl) == seconds


@pytest.mark.parametrize("ttl", ["", "5", "5x", "0m", "300m", "-1m"])
def test_bad_ttl(ttl: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(ttl)


def test_registrator_refuses_a_ttl_shorter_than_an_event(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="frames would expire"):
        settings_from(RegistratorSettings, ttl_bucket="1m", max_event_duration=120)
    assert settings_from(RegistratorSettings, ttl_bucket="5m", max_event_duration=120).ttl_bucket == "5m"


def test_the_defaults_hold_together() -> None:
    worker = settings_from(WorkerSettings, model_dir=".", task_subject="X")
    assert worker.task_max_age > worker.ack_wait * worker.task_max_deliver
    registrator = settings_from(RegistratorSettings)
    assert registrator.drain_timeout > registrator.task_max_age
    router = settings_from(RouterSettings)
    assert router.summary_timeout > router.frames_ack_wait


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        # The combination: a dead worker's tasks expired before ack_wait ran out.
        (WorkerSettings, {"ack_wait": 30, "task_max_age": 30}, "task_max_age .* must exceed ack_wait x task_max_deliver"),
        (WorkerSettings, {"ack_wait": 10, "task_max_deliver": 5, "task_max_age": 45}, "10 s x 5 = 50 s"),
        (RegistratorSettings, {"drain_timeout": 40}, "drain_timeout .* must exceed task_max_age"),
        (RouterSettings, {"frames_ack_wait": 60, "summary_timeout": 70}, "frames_ack_wait x 5 deliveries"),
        (RouterSettings, {"frames_ack_wait": 30, "summary_timeout": 30}, "summary_timeout .* must exceed frames_ack_wait"),
    ],
)
def test_settings_that_depend_on_each_other_are_checked_together(
    cls: type[VigilSettings], values: dict[str, object], message: str
) -> None:
    required = {"model_dir": ".", "task_subject": "X"} if cls is WorkerSettings else {}
    with pytest.raises(ValidationError, match=message):
        settings_from(cls, required, **values)


def test_a_bad_combination_is_one_clear_line_at_start(tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_text("ack_wait=30\ntask_max_age=30\n")
    bad = subprocess.run(
        [sys.executable, "-m", "services.detection", "--check-config", "--env-file", str(env)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "task_max_age (30 s) must exceed ack_wait x task_max_deliver (30 s x 4 = 120 s)" in bad.stderr, bad.stderr


def test_seed_keys_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMP_PATH", "/tmp/elsewhere")
    monkeypatch.setenv("ROUTING_TTL", "7")
    settings = settings_from(RegistratorSettings)
    assert str(settings.TMP_PATH) == "/tmp/elsewhere"
    assert settings.routing_ttl == 7


@pytest.mark.parametrize("service", ["reader", "router", "detection", "classification", "registrator", "api"])
def test_check_config(service: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    ok = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--check-config", "--env-file", str(empty)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout
    bad_env = tmp_path / "bad.env"
    bad_env.write_text("redis_port=not-a-port\nttl_bucket=forever\n")
    bad = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--check-config", "--env-file", str(bad_env)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "redis_port" in bad.stderr and "ttl_bucket" in bad.stderr
    assert "not-a-port" not in bad.stderr  # values are never echoed: they may be secrets
    example = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--check-config", "--env-file", str(ROOT / ".env.example")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert example.returncode == 0, example.stderr  # the documented example is a valid configuration


# -- .env.example holds the keys a user changes, and nothing no service reads -------------------------


def test_every_service_has_a_settings_module() -> None:
    # A service without one would hide its settings from the two checks below. The worker's roles
    # (services/detection, services/classification) are entry points only: their settings are the worker's.
    for main in sorted((ROOT / "services").glob("*/__main__.py")):
        if main.parent.name in ROLES:
            assert ROLES[main.parent.name] in settings_classes(), main.parent.name
            continue
        assert (main.parent / "settings.py").is_file(), f"services/{main.parent.name} has no settings.py"


def test_env_example_is_short_and_every_key_in_it_is_known() -> None:
    # The rest is in docs/configuration.md, generated from the Field descriptions.
    assert len(env_example_keys()) <= 20, sorted(env_example_keys())
    assert check_keys(ENV_EXAMPLE, {}) == []


def test_api_keys_are_api_settings() -> None:
    from services.api.settings import ApiSettings

    assert set(ApiSettings.model_fields) >= API_KEYS


def test_compose_variables_are_documented() -> None:
    # Every ${VAR} the compose files take is explained in docs/configuration.md, and is no unknown key in .env.
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = {v for v in compose_variables() if f"`{v}`" not in reference}
    assert not missing, f"compose variables missing from docs/configuration.md: {sorted(missing)}"
    assert not {v for v in compose_variables() if v.startswith("VIGIL_")} - PROJECT_VARIABLES


def test_every_vigil_variable_in_the_repository_is_known() -> None:
    # A VIGIL_* variable in a container's or a test's environment that the check does not know would stop
    # every service at start.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    typo_tests = {"tests/unit/test_settings.py", "tests/unit/test_settings_roles.py"}  # misspell them on purpose
    found: set[str] = set()
    for name in set(tracked) - typo_tests:
        path = ROOT / name
        if path.suffix in {".py", ".yml", ".yaml", ".sh", ".md", ".toml"} or path.name in {"Makefile", "Dockerfile"}:
            found |= set(re.findall(r"\bVIGIL_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    unknown = found - PROJECT_VARIABLES
    assert not unknown, f"VIGIL_ variables the settings check does not know (shared/settings_keys.py): {sorted(unknown)}"


def test_nats_host_lists_a_clusters_nodes() -> None:
    settings = settings_from(VigilSettings, nats_host="tls://a:4222, tls://b:4222,tls://c:4222")
    assert settings.nats_servers == ["tls://a:4222", "tls://b:4222", "tls://c:4222"]
    assert settings_from(VigilSettings).nats_servers == ["nats://127.0.0.1:4222"]
    with pytest.raises(ValidationError, match="none empty"):
        settings_from(VigilSettings, nats_host="tls://a:4222,,tls://b:4222")


@pytest.mark.parametrize("replicas", [0, 6])
def test_stream_replicas_are_one_to_five(replicas: int) -> None:
    with pytest.raises(ValidationError, match="stream_replicas"):
        settings_from(VigilSettings, stream_replicas=replicas)


def test_every_stream_gets_stream_replicas() -> None:
    settings = settings_from(VigilSettings, stream_replicas=3)
    configs = [frames_stream(settings), results_stream(settings), task_stream(settings, "m", "t", max_age=1.0, cap=1)]
    assert [c.num_replicas for c in configs] == [3, 3, 3]
    assert frames_stream(settings_from(VigilSettings)).num_replicas == 1
