"""SeaweedFS client: batched fid assignment with TTL, volume uploads, filer paths, guarded downloads, and the
JWTs SeaweedFS asks for when its signing keys are set (docs/security.md).

Every request is signed here, so the services never see a key or a token:
- a volume upload carries the token the master signed for its assigned batch (the volume server checks the
  fid without its `_<n>` suffix, so one token covers fid, fid_1 .. fid_<count-1>); no service holds the
  volume write key;
- a volume read (GET, HEAD) is signed with the volume read key, for that fid's batch;
- a filer request is signed with the filer read key (GET, HEAD) or write key (POST, PUT, DELETE), scoped to
  the one path and method of the request, so that a token seen on the wire opens nothing else.
Each token is minted for the request it goes with and lives TOKEN_SECONDS: SeaweedFS checks it when the
request starts, so a long streamed clip needs no longer one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from shared import jwt
from shared.access import StorageKey
from shared.credentials import read_password, tls_context
from shared.retry import retry_until
from shared.settings import VigilSettings

_ASSIGN_GROW_SECONDS = 10.0
# Long enough for a request to reach SeaweedFS over a busy network and for clocks a little apart; short, so that
# a token taken from a service (not from the wire: it travels inside TLS) repeats its one request only briefly.
TOKEN_SECONDS = 60
# A batch whose upload token runs out within this is dropped for a fresh assign: an upload takes far less.
_TOKEN_MARGIN = 5.0
_READS = frozenset({"GET", "HEAD"})
# A volume server's file URL: /<volume id>,<file key and cookie in hex>[_<n> for the n-th fid of a batch].
_FID_PATH = re.compile(r"/(\d+),([0-9a-fA-F]+)(?:_\d+)?")


class StorageError(RuntimeError):
    """SeaweedFS refused or failed a request."""


class Unfetchable(StorageError):
    """A download that no retry can bring: the caller answers with an error instead of trying again."""


class ForbiddenURL(Unfetchable):
    """A URL outside the configured SeaweedFS hosts: never fetched (SSRF guard)."""


class FileGone(Unfetchable):
    """SeaweedFS answered that the file is not there (404): expired by its TTL or never stored. Final."""


class HostGone(ForbiddenURL):
    """A volume server the master named for the URL's volume before, and names no more (it died, or left): it is
    no longer trusted, but the volume's other servers may hold the file (`download` reads it from them)."""


class RefusedDownload(Unfetchable):
    """An answer that is not a file to read: a redirect (it could lead anywhere, past the host check), or a body
    over download_max_mb. Final."""


_CHUNK = 64 * 1024
# Seconds between two readings of the master's topology (which volume servers exist): a volume server joins a
# cluster long before it can die with frames that a client has not looked up yet.
TOPOLOGY_EVERY = 30.0
# A stream to a slow client may take long as a whole; only a silent server is an error.
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=3, sock_read=30)


@dataclass(frozen=True)
class _Fid:
    host: str  # the volume server the master assigned
    fid: str
    token: str  # the master's upload token for the fid's batch; empty when SeaweedFS does not sign


@dataclass
class _FidPool:
    fids: deque[_Fid] = field(default_factory=deque)
    usable_until: float = float("inf")  # wall-clock time: the master's token says when it runs out
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class _Keys:
    """The signing keys this service was given (docs/security.md says which role holds which); None: not given."""

    volume_read: str | None = None
    filer_write: str | None = None
    filer_read: str | None = None

    @classmethod
    def read(cls, settings: VigilSettings) -> _Keys:
        def key(path: Path | None, setting: StorageKey) -> str | None:
            return None if path is None else read_password(path, setting.value, "the SeaweedFS key")

        return cls(
            volume_read=key(settings.storage_read_key_file, StorageKey.VOLUME_READ),
            filer_write=key(settings.filer_write_key_file, StorageKey.FILER_WRITE),
            filer_read=key(settings.filer_read_key_file, StorageKey.FILER_READ),
        )


def _netloc(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.netloc.lower()


class SeaweedStorage:
    ASSIGN_BATCH = 64

    def __init__(self, settings: VigilSettings, *, max_connections: int = 16, named_host_seconds: float = 60.0) -> None:
        self.master_url = settings.master_url.rstrip("/")
        self.filer_url = settings.filer_url.rstrip("/")
        # The configured SeaweedFS hosts, not the master (its GET endpoints grow and delete volumes). Frames
        # are on whichever volume server the master assigned, which need not be one of these (the seed's
        # volume_url is the filer, and volume servers come and go): check_url also trusts a host for a volume
        # while the master names it as holding that volume, asking again after named_host_seconds.
        self.named_host_seconds = named_host_seconds
        self._named: dict[tuple[str, str], float] = {}  # (host, volume) -> until when the master's answer holds
        # Every volume server the master has named, for a volume or in its topology (read with the first lookup and
        # again every TOPOLOGY_EVERY s): a URL naming one of them that the master names no more is a server that left
        # (HostGone: the file is read from the volume's other servers), even for a volume this client never looked up
        # while it was alive; a host the master never named stays foreign.
        self._servers: set[str] = set()
        self._topology_at = -float("inf")
        self.volume_lookups = 0
        self.replica_reads = 0  # files read from another volume server than their URL names (download)
        self.allowed_hosts = {_netloc(settings.volume_url), _netloc(settings.filer_url)} | {
            _netloc(h) for h in settings.storage_allowed_hosts
        }
        # The master names volume servers as host:port; they speak what volume_url speaks (https under TLS).
        self.volume_scheme = urlsplit(settings.volume_url).scheme or "http"
        self.startup_timeout = settings.startup_timeout
        self.max_download_bytes = int(settings.download_max_mb * 1024 * 1024)
        self._max_connections = max_connections
        # https:// addresses are checked against the fleet's CA, and the master asks for the client certificate.
        uses_tls = any(url.startswith("https://") for url in (self.master_url, self.filer_url, settings.volume_url))
        self._tls = tls_context(settings) if uses_tls else None
        self._settings = settings
        self._keys = _Keys()
        self._session: aiohttp.ClientSession | None = None
        self._pools: dict[str, _FidPool] = {}
        self.log = logging.getLogger("vigil.storage")

    async def __aenter__(self) -> SeaweedStorage:
        self._keys = _Keys.read(self._settings)  # a missing or empty key file stops the service here, by its setting
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._tls if self._tls is not None else True),
            timeout=aiohttp.ClientTimeout(total=30, connect=3),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use SeaweedStorage as an async context manager"
        return self._session

    async def wait_ready(self) -> None:
        async def probe() -> None:
            async with self.session.get(f"{self.master_url}/cluster/status") as resp:
                if resp.status != 200:
                    raise StorageError(f"master answered {resp.status}")

        await retry_until("SeaweedFS master", probe, timeout=self.startup_timeout, log=self.log)
        # The volume servers alive now are ours from the start: a client whose frames so far were all on configured
        # hosts never looked one up, and a server that dies before it does would be judged a foreign host, its frames
        # refused instead of read from their replicas.
        await self._read_topology()

    async def check_url(self, url: str) -> None:
        """Refuse a URL outside SeaweedFS: its host must be configured, or named by the master for its volume (an
        answer kept for named_host_seconds, so a volume server that left is no longer trusted after that)."""
        parts = urlsplit(url)
        host = parts.netloc.lower()
        if parts.scheme not in ("http", "https"):
            raise ForbiddenURL(f"URL scheme {parts.scheme!r} is not http or https")
        if host in self.allowed_hosts:
            return
        # A fid URL is http://<volume server>/<volume id>,<needle>: the master knows where each volume lives.
        volume = parts.path.lstrip("/").split(",", 1)[0].split("/", 1)[0]
        if volume.isdigit():
            now = time.monotonic()
            if self._named.get((host, volume), 0.0) > now:
                return
            hosts = await self._volume_hosts(volume)
            # Every host named is trusted for the volume, not only this one: when this one dies, the others hold
            # its replicas (download falls over to them) and a frame URL naming the dead one still passes here.
            for named in hosts:
                self._named[(named, volume)] = now + self.named_host_seconds
            if host in hosts:
                return
            if host in self._servers:  # the master named it once (every host in _named came from it too)
                raise HostGone(
                    f"URL host {parts.netloc!r} was a volume server and the master names it no more for volume {volume}"
                )
        raise ForbiddenURL(f"URL host {parts.netloc!r} is not a configured SeaweedFS host, nor one the master names")

    async def _volume_hosts(self, volume: str) -> set[str]:
        """The hosts the master says hold a volume; none when it knows no such volume."""
        self.volume_lookups += 1
        if time.monotonic() - self._topology_at >= TOPOLOGY_EVERY:
            await self._read_topology()
        async with self.session.get(f"{self.master_url}/dir/lookup", params={"volumeId": volume}) as resp:
            if resp.status == 404:
                return set()
            if resp.status != 200:
                raise StorageError(f"volume lookup answered {resp.status}")
            doc: dict[str, Any] = await resp.json(content_type=None)
        hosts = {_netloc(loc[key]) for loc in doc.get("locations") or [] for key in ("url", "publicUrl") if loc.get(key)}
        self._servers |= hosts
        return hosts

    async def _read_topology(self) -> None:
        """Every volume server the master knows now, remembered (see _servers). Best effort: without it a URL naming
        a server that left is refused rather than read from a replica, as before."""
        self._topology_at = time.monotonic()
        try:
            async with self.session.get(f"{self.master_url}/dir/status") as resp:
                doc: dict[str, Any] = await resp.json(content_type=None) if resp.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.log.warning("could not read the SeaweedFS topology: %r", exc)
            return
        centres = (doc.get("Topology") or {}).get("DataCenters") or []
        nodes = [node for centre in centres for rack in centre.get("Racks") or [] for node in rack.get("DataNodes") or []]
        self._servers |= {_netloc(node[key]) for node in nodes for key in ("Url", "PublicUrl") if node.get(key)}

    async def _next_fid(self, ttl: str) -> _Fid:
        pool = self._pools.setdefault(ttl, _FidPool())
        async with pool.lock:
            if pool.fids and time.time() >= pool.usable_until:
                pool.fids.clear()  # a slow source: the rest of the batch would be refused
            if not pool.fids:
                # One assign call hands out a whole batch (fid, fid_1, ...): the master is not
                # asked once per frame, which is what limits a naive uploader.
                doc, token = await self._assign(ttl)
                count = int(doc.get("count", 1))
                base = doc["fid"]
                host = doc["url"]
                pool.fids.extend(_Fid(host, base if i == 0 else f"{base}_{i}", token) for i in range(count))
                expires = jwt.unverified_claims(token).get("exp") if token else None
                pool.usable_until = float(expires) - _TOKEN_MARGIN if isinstance(expires, int | float) else float("inf")
            return pool.fids.popleft()

    async def _assign(self, ttl: str) -> tuple[dict[str, Any], str]:
        """The master's answer, and the upload token it signed for the batch (from its Authorization header, where
        the HTTP API puts it; empty when SeaweedFS does not sign)."""
        params = {"count": str(self.ASSIGN_BATCH)}
        if ttl:
            params["ttl"] = ttl
        deadline = time.monotonic() + _ASSIGN_GROW_SECONDS
        while True:
            async with self.session.get(f"{self.master_url}/dir/assign", params=params) as resp:
                doc: dict[str, Any] = await resp.json(content_type=None)
                token = resp.headers.get("Authorization", "").removeprefix("Bearer ")
            if "fid" in doc:
                return doc, token
            # The first assign for a TTL the master has not seen answers "No writable volumes"
            # while it grows volumes for it: a pause, not a failure.
            if "writable" not in str(doc.get("error", "")) or time.monotonic() >= deadline:
                raise StorageError(f"assign failed: {doc.get('error', doc)}")
            await asyncio.sleep(0.2)

    async def upload(self, data: bytes, *, ttl: str = "", content_type: str = "image/jpeg") -> str:
        """Store bytes on a volume server; returns the URL to fetch them from."""
        fid = await self._next_fid(ttl)
        url = f"{self.volume_scheme}://{fid.host}/{fid.fid}"
        params = {"ttl": ttl} if ttl else None
        headers = {"Content-Type": content_type} | _bearer(fid.token)
        # A raw body, not multipart: the frame is sent as it is, with nothing to encode or parse around it.
        try:
            async with self.session.put(url, data=data, params=params, headers=headers) as resp:
                if resp.status not in (200, 201):
                    raise StorageError(f"upload to {url} failed: {resp.status} {(await resp.text())[:200]}")
        except (StorageError, aiohttp.ClientConnectionError) as exc:
            # The batch's volume server is gone, or its volume can no longer be written (a replica's server is
            # gone): the rest of the batch would fail alike, so the next upload asks the master afresh.
            self._pools[ttl].fids.clear()
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"upload to {url} failed: {exc!r}") from exc
        return url

    async def put_path(self, path: str, data: bytes, *, content_type: str) -> str:
        """Store bytes under a persistent filer path (proof clips, key frames); returns its URL."""
        url = f"{self.filer_url}/{path.lstrip('/')}"
        form = aiohttp.FormData()
        form.add_field("file", data, filename=path.rsplit("/", 1)[-1], content_type=content_type)
        async with self.session.post(url, data=form, headers=self.authorization("POST", url)) as resp:
            if resp.status not in (200, 201):
                raise StorageError(
                    f"filer upload to {path} failed: {resp.status} {(await resp.text())[:200]}{self._hint(resp, 'POST', url)}"
                )
        return url

    async def download(self, url: str) -> bytes:
        """The file at `url`, read in chunks and refused past max_download_bytes; a redirect is refused, not
        followed (the host check applies to the URL asked for, not to wherever an answer points). When the volume
        server named in `url` cannot be reached, or the master names it no more for its volume (HostGone), the file is
        read from another one the master names (with replication, as `001`, every file is on two)."""
        try:
            await self.check_url(url)
            return await self._download(url)
        except (HostGone, aiohttp.ClientConnectionError):
            # The dead server is not asked again once the master has dropped it (HostGone): only those it names.
            replicas = await self._replicas(url)
            if not replicas:
                raise
        for i, replica in enumerate(replicas):
            try:
                data = await self._download(replica)
            except aiohttp.ClientConnectionError:
                if i == len(replicas) - 1:
                    raise
                continue
            self.replica_reads += 1
            return data
        raise AssertionError("unreachable: the loop returns or raises")

    async def _replicas(self, url: str) -> list[str]:
        """`url` on the other volume servers the master names for its volume now (none for a filer path): the
        master drops a volume server from its answers as soon as its connection to it breaks."""
        parts = urlsplit(url)
        volume = parts.path.lstrip("/").split(",", 1)[0]
        if not volume.isdigit():
            return []
        until = time.monotonic() + self.named_host_seconds
        replicas: list[str] = []
        for host in sorted(await self._volume_hosts(volume) - {parts.netloc.lower()}):
            self._named[(host, volume)] = until
            replicas.append(parts._replace(netloc=host).geturl())
        return replicas

    async def _download(self, url: str) -> bytes:
        cap = self.max_download_bytes
        async with self.session.get(url, allow_redirects=False, headers=self.authorization("GET", url)) as resp:
            if resp.status == 404:
                raise FileGone(f"download of {url} failed: 404, not found")
            if 300 <= resp.status < 400:
                where = resp.headers.get("Location", "nowhere")
                raise RefusedDownload(f"download of {url} answered a redirect ({resp.status} to {where}): not followed")
            if resp.status != 200:
                raise StorageError(f"download of {url} failed: {resp.status}{self._hint(resp, 'GET', url)}")
            if resp.content_length is not None and resp.content_length > cap:
                raise RefusedDownload(self._too_large(url, resp.content_length))
            body = bytearray()
            async for chunk in resp.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > cap:  # a missing or lying Content-Length stops here
                    raise RefusedDownload(self._too_large(url, len(body)))
            return bytes(body)

    def _too_large(self, url: str, size: int) -> str:
        return (
            f"download of {url} refused: {size} bytes or more, over download_max_mb "
            f"({self.max_download_bytes / 1024 / 1024:g} MiB)"
        )

    async def size(self, url: str) -> int:
        """The file's size in bytes, from a HEAD request: nothing of the body is read."""
        await self.check_url(url)
        async with self.session.head(url, allow_redirects=False, headers=self.authorization("HEAD", url)) as resp:
            if resp.status == 404:
                raise FileGone(f"{url}: 404, not found")
            if resp.status != 200 or resp.content_length is None:
                raise StorageError(f"size of {url} unknown: {resp.status}{self._hint(resp, 'HEAD', url)}")
            return resp.content_length

    @asynccontextmanager
    async def stream(self, url: str, byte_range: tuple[int, int] | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        """The file's bytes (or bytes first..last, inclusive) in chunks, as SeaweedFS sends them: for a caller that
        passes them on, never holding the file whole."""
        await self.check_url(url)
        # The range goes to SeaweedFS as it is: the token signs the path and method, not the bytes asked for.
        headers = self.authorization("GET", url) | ({"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {})
        async with self.session.get(url, headers=headers, allow_redirects=False, timeout=_STREAM_TIMEOUT) as resp:
            if resp.status == 404:
                raise FileGone(f"{url}: 404, not found")
            if resp.status != (206 if byte_range else 200):
                raise StorageError(f"reading {url} failed: {resp.status}{self._hint(resp, 'GET', url)}")
            yield resp.content.iter_chunked(_CHUNK)

    async def delete(self, url: str) -> None:
        await self.check_url(url)
        async with self.session.delete(url, headers=self.authorization("DELETE", url)) as resp:
            if resp.status not in (200, 202, 204, 404):
                raise StorageError(f"delete of {url} failed: {resp.status}{self._hint(resp, 'DELETE', url)}")

    # Signing -------------------------------------------------------------------------------------

    def authorization(self, method: str, url: str) -> dict[str, str]:
        """The Authorization header this client sends with a request, signed with the key it needs; none without
        that key (or for a volume write, which carries the master's token)."""
        path = unquote(urlsplit(url).path)
        exp = int(time.time()) + TOKEN_SECONDS
        fid = _FID_PATH.fullmatch(path)
        if fid is not None:
            # Volume writes and deletes need the master's token: no service holds the key to sign one itself.
            if method not in _READS or self._keys.volume_read is None:
                return {}
            # The volume server compares the claim with the fid without its `_<n>`: the batch's fid.
            return _bearer(jwt.sign(self._keys.volume_read, {"fid": f"{fid[1]},{fid[2]}", "exp": exp}))
        key = self._keys.filer_read if method in _READS else self._keys.filer_write
        if key is None:
            return {}
        return _bearer(jwt.sign(key, {"exp": exp, "allowed_prefixes": [path], "allowed_methods": [method]}))

    def _hint(self, resp: aiohttp.ClientResponse, method: str, url: str) -> str:
        """For a 401, the setting that gives the key SeaweedFS asked for."""
        if resp.status != 401:
            return ""
        if _FID_PATH.fullmatch(unquote(urlsplit(url).path)) is not None:
            if method not in _READS:
                return " (SeaweedFS wants the master's token, which only an upload to a fresh fid has)"
            setting = StorageKey.VOLUME_READ
        else:
            setting = StorageKey.FILER_READ if method in _READS else StorageKey.FILER_WRITE
        return f" (SeaweedFS wants a signed request: set {setting.value} to the file of its key, the same as SeaweedFS's)"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
