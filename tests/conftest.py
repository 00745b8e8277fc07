"""Fixtures shared by unit, integration, e2e and contract tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from fleet.clients import redis_client
from fleet.servers import LocalServers, ServerSet
from shared.bus import Bus
from shared.metrics import Metrics
from shared.settings import VigilSettings

# The sample fleet run, as session fixtures here so e2e and contract tests share one run.
from tests.support.fleet_run import api, sample_run  # noqa: F401 - fixtures, found by pytest by name
from tests.support.settings import MakeSettings, S, settings_from

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = REPO_ROOT / "tests"
# Folder under tests/ -> marker, so `-m "not integration"` works without decorating every test.
# The contract tests run against the sample fleet run, so they are e2e tests too. tests/deploy has no folder
# marker: its files that need a Docker engine mark themselves `deploy`, and test_compose_files.py, which
# needs none, runs in `make test`.
_FOLDER_MARKERS = {
    "integration": pytest.mark.integration,
    "e2e": pytest.mark.e2e,
    "contract": pytest.mark.e2e,
}


# tryfirst: xdist reads the xdist_group marks in its own hook of this name (renaming the nodeids), which would
# otherwise run before this one and find none, leaving every test ungrouped.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except (ValueError, IndexError):
            continue
        marker = _FOLDER_MARKERS.get(folder)
        if marker is not None:
            item.add_marker(marker)


def _xdist_group(item: pytest.Item) -> str:
    """`make test` spreads the tests over processes (pytest-xdist, --dist loadgroup): most go one by one, but the
    tests of the sample fleet run share one process, so it runs once, and so do those of a file whose fixtures live
    for the module (a NATS cluster, TLS servers), so each starts once."""
    names = getattr(item, "fixturenames", ())
    if "sample_run" in names or "api" in names:
        return "sample_run"
    info = getattr(item, "_fixtureinfo", None)
    defs = [d for ds in (info.name2fixturedefs.values() if info else ()) for d in ds]
    if any(d.scope == "module" for d in defs):
        return item.nodeid.split("::", 1)[0]
    return item.nodeid


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def local_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    """The running servers' controller, for tests that stop and restart one (stop_one/start_one).

    Session-scoped and lazy: started by the first test that needs it, so unit-only runs start nothing.
    Tests share it, so each uses `unique` names, and a test that stops a server starts it again.
    """
    servers = LocalServers(tmp_path_factory.mktemp("servers"))
    with servers:  # started, and stopped after the last test
        yield servers


@pytest.fixture(scope="session")
def servers(local_servers: LocalServers) -> ServerSet:
    return local_servers.servers


@pytest.fixture
def unique() -> str:
    """Short per-test prefix for subjects, streams and keys ("t" first: stream names must not start with a digit)."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def service_env(servers: ServerSet, unique: str, tmp_path: Path) -> dict[str, str]:
    """Settings for services under test: the test servers, and a prefix so tests never see each other's traffic."""
    return servers.env() | {"subject_prefix": unique, "TMP_PATH": str(tmp_path / "events"), "startup_timeout": "15"}


@pytest.fixture
def make_settings(service_env: dict[str, str]) -> MakeSettings:
    """Settings of any class over `service_env`: `make_settings(RouterSettings, route_batch=16)`."""

    def make(cls: type[S], /, **values: object) -> S:
        return settings_from(cls, service_env, **values)

    return make


@pytest.fixture
async def bus(make_settings: MakeSettings) -> AsyncIterator[Bus]:
    """A connected bus under the test's prefix, for a test that publishes or watches beside the services."""
    connected = Bus(make_settings(VigilSettings), "test", "test", Metrics("test"))
    await connected.connect()
    try:
        yield connected
    finally:
        await connected.close()


@pytest.fixture
async def redis(servers: ServerSet) -> AsyncIterator[Redis]:
    """A client of the test Redis; keys are the test's own through `unique` (RedisKeys of its settings)."""
    client = redis_client(servers.env())
    try:
        yield client
    finally:
        await client.aclose()
