"""Checks before `make up` touches Docker, each failing with one message that names the fix.

    python3 scripts/compose_preflight.py up            the engine, Compose and the api's port (before make up)
    python3 scripts/compose_preflight.py engine        the engine and Compose (before the other Docker targets)
    python3 scripts/compose_preflight.py build-failed  after `docker compose build` failed: what to change
    python3 scripts/compose_preflight.py dashboard     where the dashboard is, once the fleet is up

Standard library only: it runs with whatever python3 the machine has, before any virtual environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

MIN_ENGINE = (20, 10)
MIN_COMPOSE = (2, 20)
_SCALE = " ".join(f"{k}={os.environ[k]}" for k in ("DETECTION", "CLASSIFICATION") if os.environ.get(k))
LOCAL_MODE = f"Without Docker, the same fleet runs as local processes: make run {_SCALE}".rstrip()


def version_tuple(text: str) -> tuple[int, ...]:
    """'20.10.24+dfsg1' -> (20, 10, 24); 'v2.40.3' -> (2, 40, 3)."""
    parts = []
    for piece in text.strip().lstrip("v").split("+")[0].split("-")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=30)


def _compose_env() -> dict[str, str]:
    """What compose interpolates with: .env beside the compose file, overridden by the environment."""
    values: dict[str, str] = {}
    env_file = Path(".env")
    if env_file.is_file():
        for line in env_file.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                values[key.strip()] = value.split(" #")[0].strip().strip("'\"")
    return values | {k: v for k, v in os.environ.items() if k.startswith("VIGIL_")}


def check_engine() -> str | None:
    if not shutil.which("docker"):
        needs = f"Engine {_dotted(MIN_ENGINE)}+ with Compose v{_dotted(MIN_COMPOSE)}+"
        return f"The Docker targets need Docker ({needs}), and there is no docker command here. {LOCAL_MODE}"
    done = _docker("version", "--format", "{{.Server.Version}}")
    if done.returncode != 0 or not done.stdout.strip():
        where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return (
            f"No Docker engine answers at {where} ({reason}). Start it (sudo systemctl start docker), "
            f"or set DOCKER_HOST to one that runs. {LOCAL_MODE}"
        )
    engine = done.stdout.strip()
    if version_tuple(engine) < MIN_ENGINE:
        return f"Docker Engine {engine} is too old: Vigil needs {_dotted(MIN_ENGINE)} or later. Upgrade Docker, or: {LOCAL_MODE}"
    done = _docker("compose", "version", "--short")
    if done.returncode != 0:
        return (
            f"docker compose (the Compose v2 plugin) is missing: install it (Debian: docker-compose-plugin, or "
            f"the docker-compose binary in ~/.docker/cli-plugins/). {LOCAL_MODE}"
        )
    if version_tuple(done.stdout) < MIN_COMPOSE:
        found = done.stdout.strip()
        return f"Docker Compose {found} is too old: Vigil needs v{_dotted(MIN_COMPOSE)} or later. Upgrade the compose plugin."
    return None


def _api_running() -> bool:
    done = _docker("compose", "ps", "--status", "running", "--quiet", "api")
    return done.returncode == 0 and bool(done.stdout.strip())


def ensure_env_file() -> str | None:
    """compose requires the settings file (docker-compose.yml); a first `make up` starts from the example."""
    named = os.environ.get("VIGIL_ENV_FILE")
    if named:
        if not Path(named).is_file():
            return f"VIGIL_ENV_FILE names {named}, which does not exist: create it (cp .env.example {named}) or unset it."
        return None
    if Path(".env").exists():
        return None
    shutil.copyfile(".env.example", ".env")
    print("created .env from .env.example: edit it to switch sources (docker compose reads it at every up)")
    return None


def check_port(env: dict[str, str]) -> str | None:
    bind = env.get("VIGIL_API_BIND") or "127.0.0.1"
    port = int(env.get("VIGIL_API_PORT") or 8080)
    if _api_running():  # our own api holds it: `make up` again only updates the fleet
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As a server binds: a port whose old connections linger in TIME_WAIT (after `make down`) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as exc:
            return (
                f"Port {bind}:{port}, where the api is published, is taken by another program ({exc.strerror}). "
                f"Set VIGIL_API_PORT in .env to a free port, or stop that program."
            )
    return None


def _build_failed(env: dict[str, str]) -> str:
    python = env.get("VIGIL_PYTHON_IMAGE") or "python:3.11-slim-bookworm"
    return (
        "Building the Vigil images failed; the build output above names the step. The usual fixes, in .env:\n"
        f"  - the base image {python} cannot be pulled (no registry here): set VIGIL_PYTHON_IMAGE to one your "
        "mirror or engine has (any Debian-based image with python3 3.11+ and its venv module);\n"
        "  - pip cannot reach PyPI: set VIGIL_PIP_CONF to a pip.conf naming your index (and VIGIL_PIP_CA to its CA file)."
    )


def _dashboard(env: dict[str, str]) -> str:
    bind = env.get("VIGIL_API_BIND") or "127.0.0.1"
    host = "<this host's address>" if bind in ("0.0.0.0", "::") else bind
    token = Path(env.get("VIGIL_SECRETS_DIR") or "secrets") / "api-token"
    return (
        f"dashboard: http://{host}:{env.get('VIGIL_API_PORT') or 8080}/  (log in with the token in {token}; "
        "make logs follows the fleet, make down stops it)"
    )


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else "up"
    env = _compose_env()
    if mode == "dashboard":
        print(_dashboard(env))
        return 0
    if mode == "build-failed":
        print(_build_failed(env), file=sys.stderr)
        return 1
    if mode not in ("up", "engine"):
        print(f"unknown check {mode!r}: up, engine, build-failed or dashboard", file=sys.stderr)
        return 2
    problem = check_engine()
    if problem is None and mode == "up":
        problem = ensure_env_file() or check_port(_compose_env())
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
