"""One run of the whole fleet on the sample video, shared by the e2e and contract tests.

Imported by tests/conftest.py, so that both folders see one session fixture and the fleet runs once.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.run import FleetOptions, FleetReport, run_fleet
from fleet.servers import LocalServers, ServerSet
from services.api.service import ApiService
from services.api.settings import ApiSettings
from shared.access import Role, storage_keys, user_name
from shared.settings import VigilSettings
from tests.integration.helpers import running
from tests.support.settings import settings_from

PRE, POST, FPS = 2.0, 2.0, 10
# The sample video's walkway, split where the lamp post stands, and a line across it there: events record the
# zones their person entered, the line counts crossings, and the dashboard draws both. No rule requires a zone, so
# the events are those the run has without zones.
SAMPLE_ZONES: dict[str, Any] = {
    "cam0": {
        "zones": {
            "west_path": {"points": [[0, 0.3], [0.55, 0.3], [0.55, 0.58], [0, 0.46]]},
            "east_path": {"points": [[0.55, 0.22], [0.92, 0.22], [1, 0.5], [1, 0.86], [0.55, 0.58]]},
        },
        "lines": {"lamp": {"points": [[0.55, 0.2], [0.55, 0.62]], "in_side": "right"}},
    }
}


@dataclass(frozen=True)
class SampleRun:
    report: FleetReport
    prefix: str  # subject_prefix: the run's streams, keys and events
    data_dir: Path


@pytest.fixture(scope="session")
def sample_run(local_servers: LocalServers, tmp_path_factory: pytest.TempPathFactory) -> SampleRun:
    prefix = f"t{secrets.token_hex(4)}"
    data_dir = tmp_path_factory.mktemp("sample-run")
    settings = {
        "subject_prefix": prefix,
        "video_skip_frames": "1",  # half the frames: the same events, half the CI time
        "max_event_duration": "25",  # people are in every frame: split, so clips stay short
        "pre_roll": str(PRE),
        "post_roll": str(POST),
        "zones": json.dumps(SAMPLE_ZONES),
    }
    # A sync fixture with its own loop: the run is shared across tests, each of which has its own loop.
    report = asyncio.run(run_fleet(local_servers, FleetOptions(data_dir, settings=settings), asyncio.Event()))
    return SampleRun(report, prefix, data_dir)


def api_service(servers: ServerSet, prefix: str, *, as_api_user: bool = False, **extra: Any) -> ApiService:
    """The api under `prefix`. as_api_user: logged in as the api's own user (read-only Redis), with its SeaweedFS
    key alone (the filer's read key), as the fleet runs it, which exists once a fleet ran under `prefix` (the
    sample run); else as the tests' admin."""
    user = user_name(Role.API, VigilSettings.model_validate({"subject_prefix": prefix})) if as_api_user else None
    env = servers.env(user, storage_keys(Role.API)) if user else servers.env()
    settings = settings_from(ApiSettings, env, subject_prefix=prefix, api_port=0, **extra)
    return ApiService(settings)


@pytest.fixture
async def api(servers: ServerSet, sample_run: SampleRun) -> AsyncIterator[str]:
    """The api, in the test's loop, over the sample run's events; its base URL without the final slash."""
    configured = api_service(servers, sample_run.prefix, as_api_user=True, zones=SAMPLE_ZONES)  # the run's zones too
    async with running(configured, ready=lambda s: bool(s.url)) as service:
        yield service.url.rstrip("/")
