import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.registrator.settings import RegistratorSettings
from shared.ttl import parse_ttl

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("ttl", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800)])
def test_ttl(ttl: str, seconds: int) -> None:
    assert parse_ttl(ttl) == seconds


@pytest.mark.parametrize("ttl", ["", "5", "5x", "0m", "300m", "-1m"])
def test_bad_ttl(ttl: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(ttl)


def test_registrator_refuses_a_ttl_shorter_than_an_event(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="frames would expire"):
        RegistratorSettings(_env_file=None, ttl_bucket="1m", max_event_duration=120)  # type: ignore[call-arg]
    assert RegistratorSettings(_env_file=None, ttl_bucket="5m", max_event_duration=120).ttl_bucket == "5m"  # type: ignore[call-arg]


def test_seed_keys_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMP_PATH", "/tmp/elsewhere")
    monkeypatch.setenv("ROUTING_TTL", "7")
    settings = RegistratorSettings(_env_file=None)  # type: ignore[call-arg]
    assert str(settings.TMP_PATH) == "/tmp/elsewhere"
    assert settings.routing_ttl == 7


@pytest.mark.parametrize("service", ["reader", "router", "detection", "classification", "registrator"])
def test_check_config(service: str, tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--check-config", "--env-file", str(tmp_path / "none")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout
    bad_env = tmp_path / "bad.env"
    bad_env.write_text("redis_port=not-a-port\nttl_bucket=forever\n")
    bad = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--check-config", "--env-file", str(bad_env)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2
    assert "redis_port" in bad.stderr and "ttl_bucket" in bad.stderr
    assert "not-a-port" not in bad.stderr  # values are never echoed: they may be secrets
    example = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--check-config", "--env-file", str(ROOT / ".env.example")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert example.returncode == 0, example.stderr  # the documented example is a valid configuration
