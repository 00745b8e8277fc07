"""An attacker on the network, against the real servers with the users the fleet runs as (fleet.run.grant_roles):
without credentials nothing connects, and with a role's credentials nothing beyond the role's job is allowed.

Each refusal is checked twice: the server says no, and the admin sees that nothing changed."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from fleet.clients import connect_nats, redis_client
from fleet.run import grant_roles
from fleet.servers import LocalServers
from shared.contracts import Event, EventState
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from shared.subjects import Subjects, frames_stream, frames_stream_name, results_stream, results_stream_name

NOT_ALLOWED = "permissions violation"


@dataclass(frozen=True)
class Fleet:
    """The users of one fleet (its own subject_prefix) on the shared servers, and its streams, made by the admin."""

    servers: LocalServers
    settings: VigilSettings
    logins: dict[str, dict[str, str]]  # service -> its environment, credentials included

    @property
    def subjects(self) -> Subjects:
        return Subjects.from_settings(self.settings)


@pytest.fixture
async def fleet(local_servers: LocalServers) -> AsyncIterator[Fleet]:
    settings = VigilSettings.model_validate({"subject_prefix": f"t{secrets.token_hex(4)}"})
    logins = await asyncio.to_thread(grant_roles, local_servers, settings)
    admin = await connect_nats(local_servers.servers.env())
    js = admin.jetstream()
    await js.add_stream(frames_stream(settings))
    await js.add_stream(results_stream(settings))
    try:
        yield Fleet(local_servers, settings, logins)
    finally:
        for name in (frames_stream_name(settings), results_stream_name(settings)):
            await js.delete_stream(name)
        await admin.close()


class Refusals:
    """A NATS connection's asynchronous errors: the server answers a forbidden publish or subscribe with one."""

    def __init__(self) -> None:
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()

    async def on_error(self, exc: Exception) -> None:
        await self.errors.put(exc)

    async def next(self, subject: str) -> str:
        text = str(await asyncio.wait_for(self.errors.get(), 5.0)).lower()  # nats-py lowercases the server's text
        assert NOT_ALLOWED in text and subject.lower() in text, text
        return text


async def connect_as(fleet: Fleet, service: str) -> tuple[Client, Refusals]:
    refusals = Refusals()
    nc = await connect_nats(fleet.logins[service], error_cb=refusals.on_error, allow_reconnect=False)
    return nc, refusals


async def stored(fleet: Fleet, stream: str) -> int:
    admin = await connect_nats(fleet.servers.servers.env())
    try:
        return (await admin.jetstream().stream_info(stream)).state.messages
    finally:
        await admin.close()


# What an attacker would publish to make up an event: NATS checks the subject, whatever the payload.
FORGED_RESULT = b'{"model": "ssd_mobilenet_v2_coco", "detections": [{"label": "person", "score": 1.0}]}'


async def test_no_credentials_no_nats(fleet: Fleet) -> None:
    url = fleet.servers.servers.nats_url
    with pytest.raises((NoServersError, nats.errors.Error)) as refused:
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    assert "authorization" in repr(refused.value).lower() or isinstance(refused.value, NoServersError)
    reader = fleet.logins["reader"]
    with pytest.raises((NoServersError, nats.errors.Error)):
        await nats.connect(url, user=reader["nats_user"], password="guessed", allow_reconnect=False, connect_timeout=2)


async def test_no_credentials_no_redis_command(fleet: Fleet) -> None:
    servers = fleet.servers.servers
    anonymous = redis_client({"redis_host": servers.redis_host, "redis_port": str(servers.redis_port)})
    try:
        for command in (("PING",), ("SET", "vigil:owned", "1"), ("FLUSHALL",), ("KEYS", "*")):
            with pytest.raises((AuthenticationError, ResponseError), match=r"NOAUTH|authenticated"):
                await anonymous.execute_command(*command)
    finally:
        await anonymous.aclose()
    reader = fleet.logins["reader"]
    wrong = redis_client({**reader, "redis_password_file": reader["nats_password_file"]})  # another secret
    try:
        with pytest.raises(AuthenticationError):
            await wrong.ping()
    finally:
        await wrong.aclose()


async def test_reader_cannot_publish_results_or_delete_streams(fleet: Fleet) -> None:
    nc, refusals = await connect_as(fleet, "reader")
    results = results_stream_name(fleet.settings)
    try:
        await nc.publish(fleet.subjects.results, FORGED_RESULT)
        await refusals.next(fleet.subjects.results)
        js = nc.jetstream(timeout=1.0)
        for stream in (results, frames_stream_name(fleet.settings)):
            with pytest.raises((NatsTimeoutError, APIError)):
                await js.delete_stream(stream)
            await refusals.next(f"$JS.API.STREAM.DELETE.{stream}")
        # Nor can it read what the workers found.
        await nc.subscribe(fleet.subjects.results)
        await refusals.next(fleet.subjects.results)
    finally:
        await nc.close()
    assert await stored(fleet, results) == 0
    assert await stored(fleet, frames_stream_name(fleet.settings)) == 0  # both streams still there


@pytest.mark.parametrize("service", ["reader", "router", "registrator", "api"])
async def test_a_forged_result_is_refused_but_from_a_worker(fleet: Fleet, service: str) -> None:
    results = results_stream_name(fleet.settings)
    nc, refusals = await connect_as(fleet, service)
    try:
        await nc.publish(fleet.subjects.results, FORGED_RESULT)
        await refusals.next(fleet.subjects.results)
    finally:
        await nc.close()
    assert await stored(fleet, results) == 0
    # The control: a worker's credentials do publish it (so the refusal above is the permission, not a typo).
    worker = await connect_nats(fleet.logins["detection"])
    try:
        await worker.jetstream().publish(fleet.subjects.results, FORGED_RESULT)
    finally:
        await worker.close()
    assert await stored(fleet, results) == 1


async def test_api_redis_user_cannot_write(fleet: Fleet) -> None:
    keys = RedisKeys(fleet.settings)
    admin = redis_client(fleet.servers.servers.env())
    api = redis_client(fleet.logins["api"])
    try:
        await admin.set(keys.source_health("cam-1"), b"{}")
        assert await api.get(keys.source_health("cam-1")) == b"{}"  # it reads
        for command in (
            ("SET", keys.source_health("cam-1"), "forged"),
            ("DEL", keys.source_health("cam-1")),
            ("ZADD", keys.events, "1", "forged"),
            ("FLUSHALL",),
            ("CONFIG", "SET", "dir", "/"),
        ):
            with pytest.raises(NoPermissionError):
                await api.execute_command(*command)
        assert await admin.get(keys.source_health("cam-1")) == b"{}"
    finally:
        await admin.delete(keys.source_health("cam-1"))
        await admin.aclose()
        await api.aclose()


async def test_the_registrator_writes_the_event_indexes_and_the_api_only_reads_them(fleet: Fleet) -> None:
    """The store's scripts build the index keys themselves: Redis checks them against the caller's ACL all the same."""
    keys = RedisKeys(fleet.settings)
    registrator = redis_client(fleet.logins["registrator"])
    api = redis_client(fleet.logins["api"])
    record = Event(
        id="cam0-0123456789abcdef", source_id="cam0", model="ssd", label="person", label_counts={"person": 1},
        state=EventState.FINISHED, start=0, end=1, start_wall=100.0, frames=1, best_score=0.9, best_frame_seq=0,
        stored_bytes=10, updated_at=100.0,
    )  # fmt: skip
    try:
        writer = EventStore(registrator, keys)
        assert await writer.backfill_indexes() == 0
        await writer.save(record)
        page, more = await EventStore(api, keys).page({"source": "cam0", "state": "FINISHED"}, 10)
        assert [e.id for e in page] == [record.id] and more is None
        with pytest.raises(NoPermissionError):
            await api.execute_command("ZADD", keys.events_by("label", "person"), "1", "forged")
        with pytest.raises(NoPermissionError):
            await EventStore(api, keys).save(record)
        ((member, _),) = await writer.started_before(200.0)
        assert await writer.delete(member, record.id) == 10
        assert await api.zcard(keys.events_by("source", "cam0")) == 0
    finally:
        await registrator.aclose()
        await api.aclose()


async def test_writing_roles_cannot_empty_redis_or_touch_another_prefix(fleet: Fleet) -> None:
    other = RedisKeys(VigilSettings.model_validate({"subject_prefix": "someone-else"}))
    admin = redis_client(fleet.servers.servers.env())
    registrator = redis_client(fleet.logins["registrator"])
    try:
        await admin.set(other.source_health("cam-1"), b"theirs")
        for command in (("FLUSHALL",), ("FLUSHDB",), ("DEL", other.source_health("cam-1")), ("SHUTDOWN",), ("ACL", "LIST")):
            with pytest.raises(NoPermissionError):
                await registrator.execute_command(*command)
        assert await admin.get(other.source_health("cam-1")) == b"theirs"
    finally:
        await admin.delete(other.source_health("cam-1"))
        await admin.aclose()
        await registrator.aclose()


async def test_api_cannot_publish_on_nats(fleet: Fleet) -> None:
    nc, refusals = await connect_as(fleet, "api")
    try:
        await nc.publish(fleet.subjects.source_status("cam-1"), b"{}")
        await refusals.next(fleet.subjects.source_status("cam-1"))
    finally:
        await nc.close()
    assert await stored(fleet, frames_stream_name(fleet.settings)) == 0
