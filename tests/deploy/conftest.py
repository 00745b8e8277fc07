"""Fixtures of the deploy suite: a Docker engine, local base images, and one compose fleet for all scenarios."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.engine import Engine, EngineUnavailable, docker_engine
from tests.deploy.fleet import ComposeFleet, copy_repository
from tests.deploy.standins import Images, ensure_images, has_image

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT: dict[str, Any] = {}


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    try:
        with docker_engine(tmp_path_factory.mktemp("engine")) as found:
            REPORT["engine"] = found.version
            yield found
    except EngineUnavailable as exc:
        pytest.skip(f"no Docker engine for the deploy suite: {exc}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images(fleet: ComposeFleet) -> Images:
    """The names the compose file resolves to, so the stand-ins take exactly those.

    The defaults are pinned by digest, and an image built here cannot carry a registry's digest: where the
    engine lacks a pinned image, the fleet uses the tag alone through its VIGIL_*_IMAGE variable, as a site
    with its own mirror does, and the stand-in is built under that tag."""
    config = json.loads(fleet.compose("config", "--format", "json").stdout)
    services = config["services"]
    pinned = {
        "VIGIL_PYTHON_IMAGE": services["reader"]["build"]["args"]["PYTHON_IMAGE"],
        "VIGIL_NATS_IMAGE": services["nats"]["image"],
        "VIGIL_REDIS_IMAGE": services["redis"]["image"],
        "VIGIL_SEAWEEDFS_IMAGE": services["seaweedfs"]["image"],
    }
    names = {}
    for variable, image in pinned.items():
        if "@" in image and not has_image(fleet.engine, image):
            image = image.split("@", 1)[0]
            fleet.env[variable] = image
            REPORT.setdefault("unpinned", []).append(image)
        names[variable] = image
    return Images(
        python=names["VIGIL_PYTHON_IMAGE"],
        nats=names["VIGIL_NATS_IMAGE"],
        redis=names["VIGIL_REDIS_IMAGE"],
        seaweedfs=names["VIGIL_SEAWEEDFS_IMAGE"],
    )


@pytest.fixture(scope="session")
def project(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeFleet]:
    folder = tmp_path_factory.mktemp("project")
    copy_repository(REPO_ROOT, folder)
    # This checkout's virtual environment, so that `make up` (which runs make secrets with it) finds it installed.
    (folder / ".venv").symlink_to(REPO_ROOT / ".venv")
    fleet = ComposeFleet(engine, folder, _free_port())
    # This machine's own CA bundle, where its pip is given one: a site behind a TLS-inspecting proxy
    # builds the images only with it (VIGIL_PIP_CA, as a user of such a site sets it in .env).
    bundles = (os.environ.get(k, "") for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"))
    ca = next((path for path in bundles if path and Path(path).is_file()), None)
    if ca:
        fleet.env["VIGIL_PIP_CA"] = ca
    fleet.write_env(VIGIL_API_PORT=str(fleet.api_port))
    fleet.make_secrets()
    fleet.compose("down", "-v", "--remove-orphans", timeout=300)  # what an interrupted run left
    started = time.monotonic()
    report = ensure_images(engine, _images(fleet))
    REPORT["standins"] = {"built_s": report.built, "reused": report.reused, "seconds": round(time.monotonic() - started, 1)}
    try:
        yield fleet
    finally:
        REPORT["figures"] = fleet.figures
        fleet.compose("--profile", "gpu", "down", "-v", "--remove-orphans", check=False, timeout=300)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.write_line(f"deploy suite: {json.dumps(REPORT)}")
