"""SeaweedFS with volume servers apart and replication `001` (issue 17): frames uploaded as the reader uploads them
stay readable by a worker after one volume server is killed (SIGKILL), and the server comes back. Uploads go on
while two live volume servers are left (the master grows new volumes there, as `001` needs two); with two in all they
wait for the killed one to come back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fleet.servers import LocalServers, ServerSet
from shared.access import Role, storage_keys
from shared.settings import VigilSettings
from shared.storage import SeaweedStorage, StorageError
from tests.integration.helpers import wait_until
from tests.support.settings import settings_from

pytestmark = pytest.mark.timeout(90)

FRAMES = 200  # crosses three assign batches
TTL = "5m"


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}-volume-servers")
def replicated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    servers = LocalServers(tmp_path_factory.mktemp("replicated"), volume_servers=request.param)
    servers.start(("weed",))  # SeaweedFS alone: nothing here needs NATS or Redis
    try:
        yield servers
    finally:
        servers.stop()


def _volume(url: str) -> str:
    return urlsplit(url).path.lstrip("/").split(",", 1)[0]


async def _dropped(storage: SeaweedStorage, volume: str, host: str) -> bool:
    """Whether the master has dropped `host` from the volume's answer (the case where a URL naming it is judged)."""
    return host not in await storage._volume_hosts(volume)


def _storage(
    servers: ServerSet, role: Role, tmp_path: Path, named_host_seconds: float = 60.0, volume_url: str | None = None
) -> SeaweedStorage:
    """A storage client holding `role`'s SeaweedFS keys and nothing more (the reader none, a worker the read key).
    volume_url: instead of the first volume server's (the seed names the filer there: no volume server is configured)."""
    env = servers.env(storage_keys=storage_keys(role)) | {"startup_timeout": "20"}
    if volume_url is not None:
        env["volume_url"] = volume_url
    settings = settings_from(VigilSettings, env, TMP_PATH=tmp_path)
    return SeaweedStorage(settings, named_host_seconds=named_host_seconds)


async def test_frames_stay_readable_when_a_volume_server_is_killed(replicated: LocalServers, tmp_path: Path) -> None:
    servers = replicated.servers
    volume_servers = len(servers.volume_urls)
    assert volume_servers >= 2
    # Three workers: one still trusts the volumes' hosts the master named when the server dies (a download finds it
    # dead), one whose trust has lapsed (it asks the master again, which names the dead server no more), and one that
    # read a single frame before the kill: it never asked where the other volumes live while the server was alive.
    async with (
        _storage(servers, Role.READER, tmp_path) as reader,
        _storage(servers, Role.WORKER, tmp_path) as worker,
        _storage(servers, Role.WORKER, tmp_path, named_host_seconds=0) as lapsed,
        # No volume server configured: each one is trusted only as the master names it.
        _storage(servers, Role.WORKER, tmp_path, volume_url=servers.filer_url) as newcomer,
        # Started, as a service starts it (wait_ready), and nothing read before the kill.
        _storage(servers, Role.WORKER, tmp_path, volume_url=servers.filer_url) as bystander,
    ):
        await reader.wait_ready()
        await bystander.wait_ready()
        frames = {await reader.upload(f"frame {i}".encode(), ttl=TTL): f"frame {i}".encode() for i in range(FRAMES)}
        assert len(frames) == FRAMES

        # Each frame is on two volume servers: the one its URL names and one more, as the master says.
        homes = Counter[str]()
        for url in frames:
            hosts = await worker._volume_hosts(urlsplit(url).path.lstrip("/").split(",", 1)[0])
            assert len(hosts) == 2 and urlsplit(url).netloc in hosts, (url, hosts)
            homes.update(hosts)
        # The worker has been reading frames (as it does all along): it knows where each volume lives.
        for client in (worker, lapsed):
            assert all([await client.download(url) == data for url, data in frames.items()])
            assert client.replica_reads == 0
        first = next(iter(frames))
        assert await newcomer.download(first) == frames[first]

        # The volume server that the most frames' URLs name goes: every copy is on two servers, so with two the
        # holdings tie, and only a server the URLs name makes reads fall over.
        victim_host = Counter(urlsplit(url).netloc for url in frames).most_common(1)[0][0]
        assert homes[victim_host] >= len([u for u in frames if urlsplit(u).netloc == victim_host])
        victim = f"weed-volume-{[urlsplit(u).netloc for u in servers.volume_urls].index(victim_host) + 1}"
        pid = replicated.pid(victim)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        named_victim = [url for url in frames if urlsplit(url).netloc == victim_host]
        assert named_victim, "no frame's URL names the killed server: the test proves nothing"

        # Every frame still reads, those whose URL names the dead server included.
        for url, data in frames.items():
            assert await worker.download(url) == data, url
        read_all = time.monotonic() - killed_at
        assert worker.replica_reads == len(named_victim)
        for url, data in frames.items():
            assert await lapsed.download(url) == data, url
        assert lapsed.replica_reads == len(named_victim)
        # Frames on volumes the newcomer never looked up, named by the dead server: it was in the master's topology
        # when the newcomer first asked, so they are read from their replicas, not refused as a foreign host's.
        seen_volume = _volume(first)
        unseen = [url for url in named_victim if _volume(url) != seen_volume]
        assert victim_host not in newcomer.allowed_hosts
        assert unseen, "every frame of the dead server is on the one volume the newcomer knew: the test proves nothing"
        await wait_until(lambda: _dropped(lapsed, _volume(unseen[0]), victim_host), 30, "the master to drop the server")
        for url in unseen:
            assert await newcomer.download(url) == frames[url], url
        assert newcomer.replica_reads == len(unseen)
        # A client that had looked nothing up when the server died knows it from its start (CI, 2026-12-01: a worker
        # whose frames had all been on its configured volume server refused a dead server's frames as foreign).
        for url in named_victim:
            assert await bystander.download(url) == frames[url], url
        assert bystander.replica_reads == len(named_victim)

        async def uploads() -> bool:
            try:
                url = await reader.upload(b"after", ttl=TTL)
            except StorageError:
                return False
            return await worker.download(url) == b"after"

        if volume_servers == 2:  # nowhere to put a second copy: no upload succeeds until the server is back
            assert not await uploads()
            await asyncio.to_thread(replicated.start_one, victim)
        # Uploads go on, on the live servers, once the master has seen the server go (or come back).
        await wait_until(uploads, 30, "an upload after the kill")
        writes_back = time.monotonic() - killed_at

        if volume_servers > 2:
            await asyncio.to_thread(replicated.start_one, victim)
        assert replicated.running(victim)
        assert await worker.download(named_victim[0]) == frames[named_victim[0]]
    print(f"{volume_servers} volume servers: every frame read {read_all:.2f} s after the kill, uploads {writes_back:.2f} s after")
