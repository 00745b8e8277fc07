"""The api's token rules: it fails closed, sessions are signed and expire, failed logins are limited."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.api.auth import FailedLogins, Sessions, is_loopback
from services.api.settings import ApiSettings
from tests.support.settings import settings_from

TOKEN = "Kq9xQ2mZ7vB4nT8wR1yH5jL3pF6sD0gA"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api_host": "0.0.0.0"}, "would serve '0.0.0.0' without a token"),
        ({"api_host": ""}, "would serve 'every address' without a token"),
        ({"api_host": "192.168.1.20"}, "without a token"),
        ({"api_host": "0.0.0.0", "api_published_host": "0.0.0.0"}, "without a token"),
        ({"api_token": "s3cret-token"}, "api_token has 12 characters; it needs at least 32"),
        ({"api_token": "ab" * 20}, "only 2 distinct characters"),
    ],
)
def test_the_api_refuses_to_start_open_or_with_a_weak_token(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        settings_from(ApiSettings, settings)
    assert "ab" * 20 not in str(caught.value)  # no setting's value is quoted back


@pytest.mark.parametrize(
    "settings",
    [
        {},  # loopback, no token: this machine only
        {"api_host": "::1"},
        {"api_host": "localhost"},
        {"api_host": "0.0.0.0", "api_published_host": "127.0.0.1"},  # a container published on loopback
        {"api_host": "0.0.0.0", "api_token": TOKEN},
    ],
)
def test_what_may_start(settings: dict[str, str]) -> None:
    settings_from(ApiSettings, settings)


def test_the_token_may_come_from_a_file(tmp_path: Path) -> None:
    # Compose hands the api its token as a secret file (make secrets): the file's token is the api's.
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")
    settings = settings_from(ApiSettings, {"api_host": "0.0.0.0", "api_token_file": str(path)})
    assert settings.api_token.get_secret_value() == TOKEN
    path.write_text("short-secret")
    with pytest.raises(ValidationError, match="api_token has 12 characters") as weak:
        settings_from(ApiSettings, {"api_token_file": str(path)})
    with pytest.raises(ValidationError, match="both set") as both:
        settings_from(ApiSettings, {"api_token": TOKEN, "api_token_file": str(path)})
    with pytest.raises(ValidationError, match="cannot read api_token_file") as missing:
        settings_from(ApiSettings, {"api_token_file": str(tmp_path / "absent")})
    for caught in (weak, both, missing):
        assert "short-secret" not in str(caught.value) and TOKEN not in str(caught.value)


def test_check_config_says_why_and_never_prints_the_token(repo_root: Path) -> None:
    env = os.environ | {"API_HOST": "0.0.0.0", "API_TOKEN": "short-secret"}
    done = subprocess.run(
        [sys.executable, "-m", "services.api", "--check-config", "--env-file", os.devnull],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "api_token has 12 characters" in done.stderr
    assert "short-secret" not in done.stderr + done.stdout


def test_sessions_are_signed_expire_and_end_with_the_token() -> None:
    sessions = Sessions(TOKEN, lifetime_seconds=3600)
    cookie = sessions.issue(now=1000.0)
    assert TOKEN not in cookie and sessions.valid(cookie, now=4599.0)
    assert not sessions.valid(cookie, now=4600.0)  # expired
    expires, _, signature = cookie.partition(".")
    assert not sessions.valid(f"{int(expires) + 3600}.{signature}", now=1000.0)  # extended by hand
    assert not sessions.valid("", now=0) and not sessions.valid("abc.def", now=0) and not sessions.valid(TOKEN, now=0)
    assert not Sessions(TOKEN[::-1], 3600).valid(cookie, now=1000.0)  # a new token ends every session


def test_failed_logins_are_limited_per_address_for_a_window() -> None:
    failures = FailedLogins(limit=3, window_seconds=60)
    for t in (0.0, 1.0, 2.0):
        assert failures.retry_after("10.0.0.1", now=t) == 0
        failures.fail("10.0.0.1", now=t)
    assert failures.retry_after("10.0.0.1", now=3.0) == pytest.approx(57.0)
    assert failures.retry_after("10.0.0.2", now=3.0) == 0  # another address is not held back
    assert failures.retry_after("10.0.0.1", now=60.5) == 0  # the first failure left the window
    bounded = FailedLogins(limit=1, max_addresses=2)
    for address in ("a", "b", "c"):
        bounded.fail(address, now=0)
    assert bounded.retry_after("a", now=1) == 0 and bounded.retry_after("c", now=1) > 0


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("api.example") and not is_loopback("::")
