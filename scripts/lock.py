"""The lock files under requirements/: every package pinned, with the hashes pip checks (--require-hashes).

One lock per Docker image role, holding only that role's extras, and `local.txt` for `make install` (the local
fleet, its servers and the test tools). They are derived from pyproject.toml, which stays the one place where
dependencies are declared: `make lock` (this script, with uv) regenerates them all after a change there, and
tests/unit/test_locks.py fails while one no longer matches it. `make lock UPGRADE=1` moves every pin to the
newest versions that pyproject.toml allows.

The locks are universal (uv's --universal): one file serves every Python from 3.11 up and every platform,
with markers where they differ. Debian bookworm's python3.11 is 3.11.2, which needs a package that 3.11.3 and
later do not (async-timeout, for redis), so a lock resolved for this machine's Python alone would not install
in an image built on it.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK_DIR = ROOT / "requirements"
# Lock name -> the pyproject extras it adds to the project's own dependencies. The image roles are the
# Dockerfile's targets; `local` is what `make install` puts in .venv.
LOCKS: dict[str, tuple[str, ...]] = {
    "reader": ("reader",),
    "router": (),
    "worker": ("worker",),
    "worker-gpu": ("worker-gpu",),
    "registrator": ("registrator",),
    "api": ("api",),
    "notifier": ("notifier",),
    "local": ("all",),
}
# How uv marks a package that pyproject.toml asks for by name, as opposed to one pulled in by another package.
DECLARED_VIA = "vigil (pyproject.toml)"


@dataclass
class Pin:
    name: str
    version: str
    marker: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def lock_path(name: str) -> Path:
    return LOCK_DIR / f"{name}.txt"


def read_lock(path: Path) -> list[Pin]:
    """The pins of a lock file as uv writes it: `name==version ; marker`, then indented hashes and `# via` lines."""
    pins: list[Pin] = []
    for raw in path.read_text().splitlines():
        line = raw.strip().removesuffix("\\").strip()
        if not line:
            continue
        if not raw[0].isspace():
            if line.startswith("#"):
                continue
            spec, _, marker = line.partition(";")
            name, sep, version = spec.strip().partition("==")
            if not sep:
                raise ValueError(f"{path.name}: not pinned with ==: {line}")
            pins.append(Pin(canonicalize_name(name), version.strip(), marker.strip()))
        elif line.startswith("--hash="):
            pins[-1].hashes.append(line.removeprefix("--hash="))
        elif line.startswith("#"):
            via = line.lstrip("#").strip().removeprefix("via").strip()
            if via:
                pins[-1].via.append(via)
    return pins


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    """The project's dependencies plus those of the extras, with the project's own `vigil[...]` expanded."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project["optional-dependencies"]
    wanted, seen = list(extras), set()
    requirements = [Requirement(r) for r in project["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                wanted += sorted(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def problems(name: str) -> list[str]:
    """Why lock `name` no longer matches pyproject.toml (empty when it does). Offline: no resolver runs, so it
    checks what pyproject states directly: the same packages asked for by name, each pin inside its bounds,
    and a hash on every pin."""
    path = lock_path(name)
    if not path.is_file():
        return [f"{path.relative_to(ROOT)} is missing"]
    pins = read_lock(path)
    out = [f"{pin.name}=={pin.version} has no hash" for pin in pins if not pin.hashes]
    wanted = {canonicalize_name(r.name): r for r in declared(LOCKS[name])}
    locked = {pin.name for pin in pins if DECLARED_VIA in pin.via}
    out += [f"{n} is declared in pyproject.toml but not locked" for n in sorted(wanted.keys() - locked)]
    out += [f"{n} is locked as declared but pyproject.toml no longer asks for it" for n in sorted(locked - wanted.keys())]
    for pin in pins:
        requirement = wanted.get(pin.name)
        if requirement is not None and not requirement.specifier.contains(pin.version, prereleases=True):
            out.append(f"{pin.name}=={pin.version} is outside {requirement}")
    return [f"{path.relative_to(ROOT)}: {problem}" for problem in out]


def compile_lock(name: str, upgrade: bool) -> None:
    # uv keeps the versions an existing lock pins unless told to upgrade, so adding one package moves no other.
    # Paths relative to the repository keep this machine's folders out of the files' comments.
    command = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "compile",
        "--quiet",
        "--universal",
        "--python-version",
        "3.11",
        "--generate-hashes",
        "--custom-compile-command",
        "make lock",
        "--output-file",
        str(lock_path(name).relative_to(ROOT)),
        *(["--upgrade"] if upgrade else []),
    ]
    command += [arg for extra in LOCKS[name] for arg in ("--extra", extra)]
    subprocess.run([*command, PYPROJECT.name], cwd=ROOT, check=True)


def main(argv: list[str]) -> int:
    upgrade = argv == ["--upgrade"]
    if argv and not upgrade:
        print("usage: python -m scripts.lock [--upgrade]   (make lock, make lock UPGRADE=1)", file=sys.stderr)
        return 2
    LOCK_DIR.mkdir(exist_ok=True)
    for name in LOCKS:
        compile_lock(name, upgrade)
    left = [problem for name in LOCKS for problem in problems(name)]
    print("\n".join(left) or f"{len(LOCKS)} locks in {LOCK_DIR.relative_to(ROOT)}/ match pyproject.toml")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
