"""The lock files under requirements/ still say what pyproject.toml declares (scripts/lock.py, `make lock`).

Offline: no resolver runs here. A dependency added to, removed from or re-bounded in pyproject.toml without
`make lock` fails this, and so does a pin without a hash, which `pip install --require-hashes` would refuse.
"""

from __future__ import annotations

import re

import pytest

from scripts.lock import LOCKS, ROOT, lock_path, problems, read_lock


@pytest.mark.parametrize("name", list(LOCKS))
def test_lock_matches_pyproject(name: str) -> None:
    assert problems(name) == [], "run `make lock` after changing pyproject.toml's dependencies"


def test_every_lock_is_listed() -> None:
    assert {path.stem for path in (ROOT / "requirements").glob("*.txt")} == set(LOCKS)


def test_make_install_and_the_images_use_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK\s*:=\s*requirements/local\.txt$", makefile, flags=re.MULTILINE)
    assert re.search(r"pip install .*--require-hashes -r \$\(LOCK\)", makefile)
    assert not re.search(r"pip install [^\n]*\.\[", makefile), "the local install goes through the lock"


def test_a_stale_lock_is_found(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scripts.lock as lock

    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = {pin.name: pin.version for pin in read_lock(lock_path("router"))}
    stale = (
        pyproject.replace('"pyyaml>=6",', f'"pyyaml>{pinned["pyyaml"]}",')
        .replace('"aiohttp>=3.9,<4",', '"aiohttp>=3.9,<4",\n  "attrs>=20",\n  "brand-new-package>=1",')
        .replace('"prometheus-client>=0.20",', "")
    )
    assert stale != pyproject
    (tmp_path / "pyproject.toml").write_text(stale)
    monkeypatch.setattr(lock, "PYPROJECT", tmp_path / "pyproject.toml")
    found = "\n".join(problems("router"))
    assert f"pyyaml=={pinned['pyyaml']} is outside" in found
    assert "brand-new-package is declared in pyproject.toml but not locked" in found
    assert "prometheus-client is locked as declared but pyproject.toml no longer asks for it" in found
    assert "attrs is declared in pyproject.toml but not locked" in found  # locked, but only as aiohttp's
