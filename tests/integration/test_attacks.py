"""An attacker on the network, against the real servers with the users the fleet runs as (fleet.run.grant_roles):
without credentials nothing connects, and with a role's credentials nothing beyond the role's job is allowed.
Passwords and tokens are checked on top of TLS client certificates (tests/integration/test_tls.py): here the attacker
even holds a valid certificate, and the password or the token alone must still keep them out.
SeaweedFS: without a token signed with the right key nothing is read or written.

Each refusal is checked twice: the server says no, and the admin sees that nothing changed."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from fleet.clients import connect_nats, http_session, redis_client
from fleet.run import grant_roles
from fleet.servers import LocalServers
from shared import jwt
from shared.contracts import EventState
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from shared.storage import FileGone, SeaweedStorage, StorageError
from shared.subjects import Subjects, frames_stream, frames_stream_name, results_stream, results_stream_name
from tests.support.events import stored_event
from tests.support.settings import settings_from
from tests.support.weed import batch_fid

NOT_ALLOWED = "permissions violation"
NO_RETRY = Retry(NoBackoff(), 0)


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
    tls = fleet.servers.servers.ssl_context()  # a stolen client certificate, but no password
    with pytest.raises((NoServersError, nats.errors.Error)) as refused:
        await nats.connect(url, tls=tls, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    assert "authorization" in repr(refused.value).lower() or isinstance(refused.value, NoServersError)
    reader = fleet.logins["reader"]
    with pytest.raises((NoServersError, nats.errors.Error)):
        await nats.connect(url, tls=tls, user=reader["nats_user"], password="guessed", allow_reconnect=False, connect_timeout=2)


async def test_no_credentials_no_redis_command(fleet: Fleet) -> None:
    servers = fleet.servers.servers
    no_password = {k: v for k, v in servers.env().items() if k not in ("redis_user", "redis_password_file")}  # a certificate only
    # No retries: redis-py retries an AuthenticationError (a ConnectionError) with backoff, 4 s a command.
    anonymous = redis_client(no_password, retry=NO_RETRY)
    try:
        for command in (("PING",), ("SET", "vigil:owned", "1"), ("FLUSHALL",), ("KEYS", "*")):
            with pytest.raises((AuthenticationError, ResponseError), match=r"NOAUTH|authenticated"):
                await anonymous.execute_command(*command)
    finally:
        await anonymous.aclose()
    reader = fleet.logins["reader"]
    wrong = redis_client({**reader, "redis_password_file": reader["nats_password_file"]}, retry=NO_RETRY)  # another secret
    try:
        with pytest.raises(AuthenticationError):
            await wrong.ping()
    finally:
        await wrong.aclose()


async def test_reader_cannot_publish_results_or_delete_streams(fleet: Fleet) -> None:
    nc, refusals = await connect_as(fleet, "reader")
    results = results_stream_name(fleet.settings)
    try:
        await nc.publish(fleet.subjects.results("cam0"), FORGED_RESULT)
        await refusals.next(fleet.subjects.results("cam0"))
        js = nc.jetstream(timeout=1.0)
        for stream in (results, frames_stream_name(fleet.settings)):
            with pytest.raises((NatsTimeoutError, APIError)):
                await js.delete_stream(stream)
            await refusals.next(f"$JS.API.STREAM.DELETE.{stream}")
        # Nor can it read what the workers found.
        await nc.subscribe(fleet.subjects.results_all)
        await refusals.next(fleet.subjects.results_all)
    finally:
        await nc.close()
    assert await stored(fleet, results) == 0
    assert await stored(fleet, frames_stream_name(fleet.settings)) == 0  # both streams still there


@pytest.mark.parametrize("service", ["reader", "router", "registrator", "api"])
async def test_a_forged_result_is_refused_but_from_a_worker(fleet: Fleet, service: str) -> None:
    results = results_stream_name(fleet.settings)
    nc, refusals = await connect_as(fleet, service)
    try:
        await nc.publish(fleet.subjects.results("cam0"), FORGED_RESULT)
        await refusals.next(fleet.subjects.results("cam0"))
    finally:
        await nc.close()
    assert await stored(fleet, results) == 0
    # The control: a worker's credentials do publish it (so the refusal above is the permission, not a typo).
    worker = await connect_nats(fleet.logins["detection"])
    try:
        await worker.jetstream().publish(fleet.subjects.results("cam0"), FORGED_RESULT)
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
    record = stored_event("cam0-0123456789abcdef", 100.0, state=EventState.FINISHED, stored_bytes=10)
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


# SeaweedFS ----------------------------------------------------------------------------------------
# Without a token signed with the right key SeaweedFS answers 401; with signing off each request below would
# succeed, so each test fails then. The refusals are checked against what the admin then reads.

UNAUTHORIZED = 401


def storage_as(fleet: Fleet, service: str) -> SeaweedStorage:
    """The SeaweedFS client of a service, with its role's keys alone."""
    return SeaweedStorage(settings_from(VigilSettings, fleet.logins[service]))


def admin_storage(fleet: Fleet) -> SeaweedStorage:
    return SeaweedStorage(settings_from(VigilSettings, fleet.servers.servers.env()))


def certified(fleet: Fleet) -> aiohttp.ClientSession:
    """An HTTP session past SeaweedFS's TLS (a fleet certificate, taken from some container), but with no key."""
    return http_session(fleet.servers.servers.env())


async def status(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None) -> int:
    form = aiohttp.FormData()
    form.add_field("file", b"forged", filename="forged.jpg", content_type="image/jpeg")
    body = form if method == "POST" else (b"forged" if method == "PUT" else None)
    async with http.request(method, url, data=body, headers=headers, allow_redirects=False) as resp:
        return resp.status


def wrong_key(claims: dict[str, object]) -> dict[str, str]:
    """A well-formed token signed with a key of the attacker's own."""
    return {"Authorization": "Bearer " + jwt.sign(secrets.token_urlsafe(32), {"exp": int(time.time()) + 60, **claims})}


async def test_no_volume_upload_without_the_masters_token(fleet: Fleet) -> None:
    servers = fleet.servers.servers
    async with certified(fleet) as http, admin_storage(fleet) as admin:
        # Anyone who reaches the master gets a fid (until the master is behind mutual TLS), but not the right to use it.
        async with http.get(f"{servers.master_url}/dir/assign") as resp:
            doc = await resp.json(content_type=None)
            token = resp.headers.get("Authorization", "")
        url = f"https://{doc['url']}/{doc['fid']}"
        assert await status(http, "PUT", url) == UNAUTHORIZED
        assert await status(http, "POST", url) == UNAUTHORIZED
        assert await status(http, "PUT", url, wrong_key({"fid": doc["fid"]})) == UNAUTHORIZED
        with pytest.raises(FileGone):
            await admin.download(url)  # nothing was stored
        # The control: the master's token does store it (so the refusals above are the signature's).
        assert token.startswith("Bearer ")
        assert await status(http, "PUT", url, {"Authorization": token}) == 201
        assert await admin.download(url) == b"forged"


async def test_no_volume_read_without_a_signed_token(fleet: Fleet) -> None:
    async with storage_as(fleet, "reader") as reader, storage_as(fleet, "detection") as worker:
        url = await reader.upload(b"\xff\xd8 a frame", ttl="5m")  # as the reader stores a frame
        async with certified(fleet) as http:
            assert await status(http, "GET", url) == UNAUTHORIZED
            assert await status(http, "HEAD", url) == UNAUTHORIZED
            assert await status(http, "GET", url, wrong_key({"fid": batch_fid(url)})) == UNAUTHORIZED
        # Nor can the roles without the volume read key: the reader itself, the api.
        for service in ("reader", "api", "router"):
            async with storage_as(fleet, service) as keyless:
                with pytest.raises(StorageError, match="401"):
                    await keyless.download(url)
        assert await worker.download(url) == b"\xff\xd8 a frame"  # the control: a worker's signed read
        async with storage_as(fleet, "registrator") as registrator:
            assert await registrator.download(url) == b"\xff\xd8 a frame"


async def test_a_read_token_for_one_frame_does_not_read_another(fleet: Fleet) -> None:
    # Two readers: two assigns, two batches. (Within one batch a token covers every fid: SeaweedFS checks the
    # fid without its `_<n>`.)
    async with storage_as(fleet, "reader") as one, storage_as(fleet, "reader") as two, storage_as(fleet, "detection") as worker:
        mine, theirs = await one.upload(b"mine", ttl="5m"), await two.upload(b"theirs", ttl="5m")
        assert batch_fid(mine) != batch_fid(theirs)
        token = worker.authorization("GET", mine)  # what the worker sends to read `mine`
        async with certified(fleet) as http:
            assert await status(http, "GET", mine, token) == 200
            assert await status(http, "GET", theirs, token) == UNAUTHORIZED
            assert await status(http, "DELETE", mine, token) == UNAUTHORIZED  # a read token deletes nothing
        assert await worker.download(mine) == b"mine"


async def test_no_filer_write_or_read_without_a_signed_token(fleet: Fleet) -> None:
    prefix = fleet.settings.subject_prefix
    async with admin_storage(fleet) as admin, certified(fleet) as http:
        clip = await admin.put_path(f"vigil/events/{prefix}/{prefix}.mp4", b"the clip", content_type="video/mp4")
        forged = f"{admin.filer_url}/vigil/events/{prefix}/forged.mp4"
        for method, url in (("POST", forged), ("PUT", forged), ("POST", clip), ("DELETE", clip)):
            assert await status(http, method, url) == UNAUTHORIZED, (method, url)
            assert await status(http, method, url, wrong_key({})) == UNAUTHORIZED, (method, url)
        for method in ("GET", "HEAD"):
            assert await status(http, method, clip) == UNAUTHORIZED
            assert await status(http, method, clip, wrong_key({})) == UNAUTHORIZED
        # Nor can a role without the filer's keys: the reader writes no clip, the worker reads none.
        async with storage_as(fleet, "reader") as reader, storage_as(fleet, "detection") as worker:
            with pytest.raises(StorageError, match="401"):
                await reader.put_path(f"vigil/events/{prefix}/forged.mp4", b"forged", content_type="video/mp4")
            with pytest.raises(StorageError, match="401"):
                await worker.download(clip)
        assert await admin.download(clip) == b"the clip"
        with pytest.raises(FileGone):
            await admin.size(forged)


async def test_the_apis_filer_token_neither_writes_nor_deletes(fleet: Fleet) -> None:
    prefix = fleet.settings.subject_prefix
    async with admin_storage(fleet) as admin, storage_as(fleet, "api") as api, certified(fleet) as http:
        clip = await admin.put_path(f"vigil/events/{prefix}/{prefix}.mp4", b"the clip", content_type="video/mp4")
        assert await api.download(clip) == b"the clip"  # it reads
        seen = api.authorization("GET", clip)  # its token, as seen on the wire
        for method in ("POST", "PUT", "DELETE"):
            assert await status(http, method, clip, seen) == UNAUTHORIZED, method
        # Whatever the api signs with its key (any path, any method) writes nothing: writes need the other key.
        own_key = fleet.logins["api"]["filer_read_key_file"]
        anything = {"Authorization": "Bearer " + jwt.sign(Path(own_key).read_text(), {"exp": int(time.time()) + 60})}
        for method in ("POST", "DELETE"):
            assert await status(http, method, clip, anything) == UNAUTHORIZED, method
        with pytest.raises(StorageError, match="401"):
            await api.delete(clip)
        assert await admin.download(clip) == b"the clip"


async def test_the_registrators_token_is_scoped_to_its_path_and_method(fleet: Fleet) -> None:
    prefix = fleet.settings.subject_prefix
    async with admin_storage(fleet) as admin, storage_as(fleet, "registrator") as registrator, certified(fleet) as http:
        other = await admin.put_path(f"vigil/events/{prefix}-other/k.jpg", b"another event's", content_type="image/jpeg")
        mine = await registrator.put_path(f"vigil/events/{prefix}/k.jpg", b"its key frame", content_type="image/jpeg")
        seen = registrator.authorization("POST", mine)  # the token of that upload
        assert await status(http, "POST", other, seen) == UNAUTHORIZED  # another path
        assert await status(http, "DELETE", mine, seen) == UNAUTHORIZED  # another method
        assert await status(http, "GET", mine, seen) == UNAUTHORIZED  # a write token reads nothing
        await registrator.delete(mine)  # retention: its own delete, signed for it
        with pytest.raises(FileGone):
            await admin.size(mine)
        assert await admin.download(other) == b"another event's"
