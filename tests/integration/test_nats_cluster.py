"""A 3-node NATS cluster with streams of 3 replicas: SIGKILL the node that leads the stream and holds the
producer's connection, mid-run, then start it again. Every acknowledged message must be in the stream exactly
once, the consumer must get them all, and the clients must have moved to another node (issue 17)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.servers import LocalServers
from shared.bus import Bus, Outgoing, fetch
from shared.metrics import Metrics
from shared.retry import InfrastructureUnavailable
from shared.settings import VigilSettings
from shared.subjects import Subjects, results_stream
from tests.integration.helpers import seconds_until, wait_until
from tests.support.settings import settings_from

pytestmark = pytest.mark.timeout(150)

NODES = 3
MESSAGES = 300
KILL_AT = 100  # messages acknowledged before the kill
RESTART_AT = 200  # ... and before the killed node is started again
DURABLE = "cluster-test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    servers = LocalServers(tmp_path_factory.mktemp("cluster"), nats_nodes=NODES)
    servers.start(("nats",))  # NATS alone: nothing here needs Redis or SeaweedFS
    try:
        yield servers
    finally:
        servers.stop()


async def _lead_from(bus: Bus, stream: str, node: str) -> None:
    """Move the stream's leadership to `node` (asking for it by name), so that one kill takes both."""

    async def led() -> bool:
        info = await bus.js.stream_info(stream)
        if info.cluster is not None and info.cluster.leader == node:
            return True
        request = json.dumps({"placement": {"preferred": node}}).encode()
        assert bus.nc is not None
        await bus.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5.0)
        return False

    await wait_until(led, 20, f"{node} leading {stream}")


async def test_a_killed_node_loses_no_acknowledged_message(cluster: LocalServers, unique: str, tmp_path: Path) -> None:
    servers = cluster.servers
    env = servers.env() | {"subject_prefix": unique, "stream_replicas": str(NODES), "startup_timeout": "20"}
    settings = settings_from(VigilSettings, env, TMP_PATH=tmp_path)
    assert settings.nats_servers == servers.nats_urls and len(servers.nats_urls) == NODES
    producer = Bus(settings, "test", "producer", Metrics("producer"))
    consumer = Bus(settings, "test", "consumer", Metrics("consumer"))
    await producer.connect()
    await consumer.connect()
    try:
        config = results_stream(settings)
        assert config.name is not None
        await producer.ensure_stream(config)
        info = await producer.js.stream_info(config.name)
        assert info.config.num_replicas == NODES
        assert info.cluster is not None and len(info.cluster.replicas or []) == NODES - 1

        assert producer.nc is not None and producer.nc.connected_url is not None
        victim = servers.nats_node(producer.nc.connected_url.geturl())
        await _lead_from(producer, config.name, victim)

        subject = Subjects.from_settings(settings).results("cam0")
        acked: list[str] = []
        received: list[str] = []
        sub = await consumer.durable_pull(config.name, DURABLE, ack_wait=2.0)
        produced = asyncio.Event()

        async def consume() -> None:
            while not (produced.is_set() and set(received) >= set(acked)):
                for msg in await fetch(sub, 50, timeout=0.5):
                    received.append((msg.headers or {})["Nats-Msg-Id"])
                    # An ack lost with the node is a redelivery later, not a loss: counted below.
                    await msg.ack()

        nc = producer.nc

        def moved_away() -> bool:
            url = nc.connected_url
            return nc.is_connected and url is not None and servers.nats_node(url.geturl()) != victim

        consuming = asyncio.create_task(consume())
        killed_at = failed_over_at = restarted_at = 0.0
        for i in range(MESSAGES):
            if i == KILL_AT:
                pid = cluster.pid(victim)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
                moving = asyncio.create_task(seconds_until(moved_away, 60, "the producer on another node"))
            if i == RESTART_AT:
                started = time.monotonic()
                await asyncio.to_thread(cluster.start_one, victim)
                restarted_at = time.monotonic() - started
            out = Outgoing(subject, str(i).encode(), f"{unique}-{i}")
            await producer.publish_out(out, timeout=30.0)
            acked.append(out.msg_id)
            if i == KILL_AT:
                failed_over_at = time.monotonic() - killed_at
        produced.set()
        await asyncio.wait_for(consuming, timeout=30.0)

        # Exactly once in the stream: every acknowledged id, none twice, nothing else.
        state = (await producer.js.stream_info(config.name)).state
        stored = [
            (await producer.js.get_msg(config.name, seq)).headers["Nats-Msg-Id"]  # type: ignore[index]
            for seq in range(state.first_seq, state.last_seq + 1)
        ]
        assert state.messages == MESSAGES
        assert Counter(stored) == Counter(acked)
        assert set(received) == set(acked)

        # The clients left the dead node: the producer's connection moved to another.
        moved_after = await asyncio.wait_for(moving, timeout=5.0)
        assert producer.nc.stats["reconnects"] >= 1
        assert producer.nc.connected_url is not None
        assert servers.nats_node(producer.nc.connected_url.geturl()) != victim

        # The restarted node catches up and serves as a replica again.
        async def replicas_current() -> bool:
            cluster_info = (await producer.js.stream_info(config.name)).cluster
            peers = cluster_info.replicas or [] if cluster_info is not None else []
            return len(peers) == NODES - 1 and all(p.current for p in peers)

        await wait_until(replicas_current, 20, "the restarted node's replica to catch up")
        print(
            f"\nNATS cluster of {NODES}, {NODES} replicas: SIGKILL of {victim} (stream leader, producer's node) after "
            f"{KILL_AT} messages; producer on another node {moved_after:.2f} s later, next publish acknowledged "
            f"{failed_over_at:.2f} s later; {victim} restarted in {restarted_at:.2f} s; stored {state.messages}/{MESSAGES}, "
            f"consumed {len(set(received))} ({len(received) - len(set(received))} redeliveries)"
        )
    finally:
        await producer.close()
        await consumer.close()


async def test_more_replicas_than_nodes_is_a_clear_error(cluster: LocalServers, unique: str, tmp_path: Path) -> None:
    env = cluster.servers.env() | {"subject_prefix": unique, "stream_replicas": str(NODES + 2), "startup_timeout": "10"}
    settings = settings_from(VigilSettings, env, TMP_PATH=tmp_path)
    bus = Bus(settings, "test", "owner", Metrics("owner"))
    await bus.connect()
    try:
        with pytest.raises(InfrastructureUnavailable, match="set stream_replicas to at most"):
            await bus.ensure_stream(results_stream(settings))
    finally:
        await bus.close()


def test_a_fleet_certificate_without_the_route_password_cannot_join(cluster: LocalServers) -> None:
    """Every service holds a client certificate from the fleet's CA: on a route port it must not pass for a node."""
    servers = cluster.servers
    for port in cluster.nats_route_ports:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            servers.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            assert conn.recv(4096).startswith(b"INFO ")
            conn.sendall(b'CONNECT {"verbose":false,"pedantic":false,"tls_required":true,"name":"intruder"}\r\nPING\r\n')
            reply = b""
            while b"\r\n" not in reply:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"-ERR 'Authorization Violation'"), reply
