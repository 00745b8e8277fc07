"""The compose fleet under test: a copy of the repository, its .env, and the calls the scenarios make.

The copy holds the repository's own docker-compose.yml, Dockerfile and Makefile, unchanged; .env is made
from .env.example. Everything is asked of the fleet the way a user would: `docker compose`, `make`, and
the api's HTTP answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.deploy.engine import Engine, run

PROJECT = "vigildeploy"  # fixed, so the images built by one run are reused by the next
T = TypeVar("T")


def copy_repository(root: Path, dest: Path) -> None:
    """The files a clone has (tracked, plus new ones git does not ignore): what a user builds from."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = root / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


class ComposeFleet:
    def __init__(self, engine: Engine, folder: Path, api_port: int) -> None:
        self.engine = engine
        self.folder = folder
        self.api_port = api_port
        self.env = engine.env | {
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_PROGRESS": "plain",
            "BUILDKIT_PROGRESS": "plain",
            "NO_COLOR": "1",
        }
        self.figures: dict[str, float] = {}  # seconds per step, and counts

    # ---- settings -------------------------------------------------------------------------------
    def write_env(self, **values: str) -> None:
        """.env = .env.example with these keys set (replaced where the example has them, else appended)."""
        lines = (self.folder / ".env.example").read_text().splitlines()
        pending = dict(values)
        out = []
        for line in lines:
            key = line.split("=", 1)[0].strip()
            if "=" in line and not line.lstrip().startswith("#") and key in pending:
                out.append(f"{key}={pending.pop(key)}")
            else:
                out.append(line)
        out += [f"{k}={v}" for k, v in pending.items()]
        (self.folder / ".env").write_text("\n".join(out) + "\n")

    def make_secrets(self) -> None:
        """What `make up` does first (scripts/compose_secrets.py), with this interpreter: secrets/ of the copy."""
        run([sys.executable, "-m", "scripts.compose_secrets"], self.env | {"PYTHONPATH": str(self.folder)}, cwd=self.folder)

    def secret(self, name: str) -> str:
        return (self.folder / "secrets" / name).read_text()

    # ---- commands -------------------------------------------------------------------------------
    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run(["docker", "compose", *args], self.env, check=check, timeout=timeout, cwd=self.folder)

    def make(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 900,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(["make", "--no-print-directory", *args], env or self.env, check=check, timeout=timeout, cwd=self.folder)

    def timed(self, what: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            return action()
        finally:
            self.figures[what] = round(time.monotonic() - started, 1)

    def containers(self, service: str, *, all_states: bool = False) -> list[str]:
        args = ["ps", "-q", *(["-a"] if all_states else []), service]
        return self.compose(*args).stdout.split()

    def states(self) -> dict[str, list[dict[str, Any]]]:
        """`docker compose ps` as {service: [{Name, State, Health, ExitCode}, ...]}."""
        out = self.compose("ps", "-a", "--format", "json").stdout.strip()
        # Compose before 2.21 prints one JSON array, later ones a JSON object per line.
        rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines() if line]
        by_service: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_service.setdefault(row["Service"], []).append(row)
        return by_service

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(self.engine.docker("inspect", container).stdout)[0]

    def jetstream(self) -> dict[str, dict[str, Any]]:
        """Every consumer's state, from the NATS monitoring endpoint inside its container: {name: info}."""
        raw = self.compose("exec", "-T", "nats", "wget", "-qO-", "http://127.0.0.1:8222/jsz?consumers=true").stdout
        consumers: dict[str, dict[str, Any]] = {}
        for account in json.loads(raw).get("account_details", []):
            for stream in account.get("stream_detail", []):
                for consumer in stream.get("consumer_detail", []) or []:
                    consumers[consumer["name"]] = consumer
        return consumers

    # ---- api ------------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def request(self, path: str) -> urllib.request.Request:
        """A request with the api token that make secrets made: the api always asks for one."""
        return urllib.request.Request(self.url(path), headers={"Authorization": f"Bearer {self.secret('api-token')}"})

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.request(path), timeout=10) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str) -> tuple[int, str, bytes]:
        with urllib.request.urlopen(self.request(path), timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()

    def totals(self, source: str) -> dict[str, Any] | None:
        try:
            return self.get("/api/v1/totals")["sources"].get(source)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def events(self, source: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor = ""
        while True:
            page = self.get(f"/api/v1/events?source={source}&limit=200{cursor}")
            found += page["events"]
            if not page.get("next_cursor"):
                return found
            cursor = f"&cursor={page['next_cursor']}"

    def live_workers(self) -> dict[str, list[dict[str, Any]]]:
        try:
            return self.get("/api/v1/services")["models"]
        except (urllib.error.URLError, OSError, ValueError):
            return {}


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0, describe: Callable[[], Any] | None = None
) -> T:
    """Poll until `check` returns something truthy; fail with `what` (and the state `describe` gives)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            state = f": {describe()}" if describe else ""
            raise AssertionError(f"not within {timeout:.0f} s: {what}{state}")
        time.sleep(interval)
