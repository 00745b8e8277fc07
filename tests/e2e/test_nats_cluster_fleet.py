"""The real fleet on the sample video's first 40 s, over a 3-node NATS cluster with streams of 3 replicas: the node that leads
the frames stream is killed with SIGKILL mid-run and started again. The run must end as one without the kill:
every frame read published, routed and inferred, no service down, and the services on the dead node moved to the
others (issue 17)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.clients import connect_nats
from fleet.run import Fleet, FleetOptions, run_fleet
from fleet.servers import LocalServers, ServerSet, _http_get
from shared.settings import VigilSettings
from shared.subjects import frames_stream_name
from tests.e2e.faults import SOURCE, check_file_read_whole, frames_published_beyond, sample_start, sigkill_server
from tests.integration.helpers import wait_for
from tests.support.settings import settings_from

pytestmark = pytest.mark.timeout(420)

NODES = 3


@pytest.fixture(scope="module")
def cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    servers = LocalServers(tmp_path_factory.mktemp("cluster-fleet"), nats_nodes=NODES)
    with servers:  # started, and stopped after the last test
        yield servers


def _client_names(servers: ServerSet, node: str) -> set[str]:
    """The names of the clients connected to `node` (its monitor's /connz): a service's is <service>-<instance>."""
    got = _http_get(f"{servers.nats_monitor_urls[int(node.removeprefix('nats-')) - 1]}/connz?limit=1024")
    assert got is not None and got[0] == 200, got
    return {c.get("name", "") for c in json.loads(got[1]).get("connections", [])} - {""}


async def test_fleet_goes_on_when_the_frames_leader_is_killed(cluster_servers: LocalServers, unique: str, tmp_path: Path) -> None:
    servers = cluster_servers.servers
    fleet = Fleet()
    values = {"subject_prefix": unique, "stream_replicas": str(NODES), "video_skip_frames": "1", "startup_timeout": "30"}
    values |= {"video_source": str(sample_start(tmp_path))}
    options = FleetOptions(tmp_path, settings=values | {"max_event_duration": "10"})
    run = asyncio.create_task(run_fleet(cluster_servers, options, asyncio.Event(), fleet))
    victim = ""
    try:
        await wait_for(lambda: run.done() or fleet.progress.frames["published"] >= 60, 120, "60 frames on the bus")
        assert not run.done(), run.result()
        settings = settings_from(VigilSettings, servers.env() | values)
        nc = await connect_nats(servers.env())
        try:
            info = await nc.jetstream().stream_info(frames_stream_name(settings))
        finally:
            await nc.close()
        assert info.config.num_replicas == NODES and info.cluster is not None and info.cluster.leader
        victim = info.cluster.leader
        on_victim = {name for name in _client_names(servers, victim) if not name.startswith("nats")}
        killed_at = sigkill_server(cluster_servers, victim)
        published = fleet.progress.frames["published"]

        others = [f"nats-{i}" for i in range(1, NODES + 1) if f"nats-{i}" != victim]
        moved = lambda: on_victim <= set().union(*(_client_names(servers, n) for n in others))  # noqa: E731
        await wait_for(moved, 30, f"{on_victim} reconnected to another node")
        moved_after = time.monotonic() - killed_at
        # Frames seen on the bus (the reader's publishes, retries included): the reader goes on sending.
        await frames_published_beyond(fleet, run, published, 60, "a frame published after the kill")
        flowing_after = time.monotonic() - killed_at
        await asyncio.to_thread(cluster_servers.start_one, victim)
        report = await asyncio.wait_for(run, 300)
    finally:
        if victim and not cluster_servers.running(victim):
            cluster_servers.start_one(victim)
    status = report.sources[SOURCE]
    drained = report.drained[SOURCE]
    print(
        f"\nFleet on a {NODES}-node NATS cluster, {NODES} replicas: SIGKILL of {victim} (frames leader; "
        f"{len(on_victim)} service connections on it) after {published} frames; they were on other nodes "
        f"{moved_after:.2f} s later, frames on the bus again {flowing_after:.2f} s later; {status.state.value}, read "
        f"{status.frames_read}, published {status.frames_published}, dropped {status.frames_dropped}; routed "
        f"{drained.frames_routed}, tasks {drained.tasks}, results {drained.results}; wall {report.wall_seconds:.0f} s"
    )
    check_file_read_whole(report)
