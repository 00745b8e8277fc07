"""The real fleet on the sample video's first 40 s, over SeaweedFS with three volume servers and replication `001`: the volume
server holding the most volumes is killed with SIGKILL mid-run, and started again at the end. The run must end as
one without the kill: every frame read published, routed and inferred (none unreadable), no service down (issue 17)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.run import Fleet, FleetOptions, run_fleet
from fleet.servers import LocalServers, ServerSet, _http_get
from tests.e2e.faults import SOURCE, check_file_read_whole, frames_published_beyond, sample_start, sigkill_server
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.timeout(420)

# Three: with two, uploads stop until the lost one is back (001 needs two live servers; docs/operations.md).
VOLUME_SERVERS = 3


@pytest.fixture(scope="module")
def replicated_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    servers = LocalServers(tmp_path_factory.mktemp("replicated-fleet"), volume_servers=VOLUME_SERVERS)
    with servers:  # started, and stopped after the last test
        yield servers


def _fullest(servers: ServerSet) -> str:
    """The volume server ("weed-volume-2") that holds the most volumes, as the master's topology says."""
    got = _http_get(f"{servers.master_url}/dir/status", context=servers.ssl_context())
    assert got is not None and got[0] == 200, got
    racks = json.loads(got[1])["Topology"]["DataCenters"][0]["Racks"]
    volumes = {node["Url"]: node["Volumes"] for rack in racks for node in rack["DataNodes"]}
    hosts = [url.split("://", 1)[1] for url in servers.volume_urls]
    return f"weed-volume-{hosts.index(max(volumes, key=volumes.__getitem__)) + 1}"


async def test_fleet_goes_on_when_a_volume_server_is_killed(
    replicated_servers: LocalServers, unique: str, tmp_path: Path
) -> None:
    servers = replicated_servers.servers
    fleet = Fleet()
    values = {"subject_prefix": unique, "video_skip_frames": "1", "startup_timeout": "30"}
    values |= {"video_source": str(sample_start(tmp_path))}
    options = FleetOptions(tmp_path, settings=values | {"max_event_duration": "10"})
    run = asyncio.create_task(run_fleet(replicated_servers, options, asyncio.Event(), fleet))
    victim = _fullest(servers)
    try:
        await wait_for(lambda: run.done() or fleet.progress.frames["published"] >= 60, 120, "60 frames on the bus")
        assert not run.done(), run.result()
        killed_at = sigkill_server(replicated_servers, victim)
        published = fleet.progress.frames["published"]
        await frames_published_beyond(fleet, run, published + 20, 60, "frames stored and published after the kill")
        flowing_after = time.monotonic() - killed_at
        report = await asyncio.wait_for(run, 300)
    finally:
        if not replicated_servers.running(victim):
            replicated_servers.start_one(victim)
    status = report.sources[SOURCE]
    drained = report.drained[SOURCE]
    print(
        f"\nFleet on {VOLUME_SERVERS} volume servers, replication 001: SIGKILL of {victim} after {published} frames; "
        f"20 more frames published {flowing_after:.2f} s later; {status.state.value}, read {status.frames_read}, "
        f"published {status.frames_published}, dropped {status.frames_dropped}; routed {drained.frames_routed}, "
        f"results {drained.results}, error results {report.error_results}; wall {report.wall_seconds:.0f} s"
    )
    check_file_read_whole(report)
    # Every frame was read by the workers, those on the dead server from their replica: no error result.
    assert not any(report.error_results.values()), report.error_results
