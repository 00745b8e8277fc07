"""SeaweedFS client: batched fid assignment with TTL, volume uploads, filer paths, guarded downloads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from shared.credentials import tls_context
from shared.retry import retry_until
from shared.settings import VigilSettings

_ASSIGN_GROW_SECONDS = 10.0


class StorageError(RuntimeError):
    """SeaweedFS refused or failed a request."""


class Unfetchable(StorageError):
    """A download that no retry can bring: the caller answers with an error instead of trying again."""


class ForbiddenURL(Unfetchable):
    """A URL outside the configured SeaweedFS hosts: never fetched (SSRF guard)."""


class FileGone(Unfetchable):
    """SeaweedFS answered that the file is not there (404): expired by its TTL or never stored. Final."""


class RefusedDownload(Unfetchable):
    """An answer that is not a file to read: a redirect (it could lead anywhere, past the host check), or a body
    over download_max_mb. Final."""


_CHUNK = 64 * 1024
# A stream to a slow client may take long as a whole; only a silent server is an error.
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=3, sock_read=30)


@dataclass
class _FidPool:
    fids: deque[tuple[str, str]] = field(default_factory=deque)  # (volume host, fid)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _netloc(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.netloc.lower()


class SeaweedStorage:
    ASSIGN_BATCH = 64

    def __init__(self, settings: VigilSettings, *, max_connections: int = 16) -> None:
        self.master_url = settings.master_url.rstrip("/")
        self.filer_url = settings.filer_url.rstrip("/")
        # The configured SeaweedFS hosts, not the master (its GET endpoints grow and delete volumes). Frames
        # are on whichever volume server the master assigned, which need not be one of these (the seed's
        # volume_url is the filer): check_url also trusts a host the master names as holding the URL's
        # volume, and remembers it.
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
        self._session: aiohttp.ClientSession | None = None
        self._pools: dict[str, _FidPool] = {}
        self.log = logging.getLogger("vigil.storage")

    async def __aenter__(self) -> SeaweedStorage:
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

    async def check_url(self, url: str) -> None:
        """Refuse a URL outside SeaweedFS: its host must be configured, or named by the master for its volume."""
        parts = urlsplit(url)
        host = parts.netloc.lower()
        if parts.scheme not in ("http", "https"):
            raise ForbiddenURL(f"URL scheme {parts.scheme!r} is not http or https")
        if host in self.allowed_hosts:
            return
        # A fid URL is http://<volume server>/<volume id>,<needle>: the master knows where each volume lives.
        volume = parts.path.lstrip("/").split(",", 1)[0].split("/", 1)[0]
        if volume.isdigit() and host in await self._volume_hosts(volume):
            self.allowed_hosts.add(host)
            return
        raise ForbiddenURL(f"URL host {parts.netloc!r} is not a configured SeaweedFS host, nor one the master names")

    async def _volume_hosts(self, volume: str) -> set[str]:
        """The hosts the master says hold a volume; none when it knows no such volume."""
        async with self.session.get(f"{self.master_url}/dir/lookup", params={"volumeId": volume}) as resp:
            if resp.status == 404:
                return set()
            if resp.status != 200:
                raise StorageError(f"volume lookup answered {resp.status}")
            doc: dict[str, Any] = await resp.json(content_type=None)
        return {_netloc(loc[key]) for loc in doc.get("locations") or [] for key in ("url", "publicUrl") if loc.get(key)}

    async def _next_fid(self, ttl: str) -> tuple[str, str]:
        pool = self._pools.setdefault(ttl, _FidPool())
        async with pool.lock:
            if not pool.fids:
                # One assign call hands out a whole batch (fid, fid_1, ...): the master is not
                # asked once per frame, which is what limits a naive uploader.
                doc = await self._assign(ttl)
                count = int(doc.get("count", 1))
                base = doc["fid"]
                host = doc["url"]
                pool.fids.extend((host, base if i == 0 else f"{base}_{i}") for i in range(count))
            return pool.fids.popleft()

    async def _assign(self, ttl: str) -> dict[str, Any]:
        params = {"count": str(self.ASSIGN_BATCH)}
        if ttl:
            params["ttl"] = ttl
        deadline = time.monotonic() + _ASSIGN_GROW_SECONDS
        while True:
            async with self.session.get(f"{self.master_url}/dir/assign", params=params) as resp:
                doc: dict[str, Any] = await resp.json(content_type=None)
            if "fid" in doc:
                return doc
            # The first assign for a TTL the master has not seen answers "No writable volumes"
            # while it grows volumes for it: a pause, not a failure.
            if "writable" not in str(doc.get("error", "")) or time.monotonic() >= deadline:
                raise StorageError(f"assign failed: {doc.get('error', doc)}")
            await asyncio.sleep(0.2)

    async def upload(self, data: bytes, *, ttl: str = "", content_type: str = "image/jpeg") -> str:
        """Store bytes on a volume server; returns the URL to fetch them from."""
        host, fid = await self._next_fid(ttl)
        url = f"{self.volume_scheme}://{host}/{fid}"
        params = {"ttl": ttl} if ttl else None
        # A raw body, not multipart: the frame is sent as it is, with nothing to encode or parse around it.
        async with self.session.put(url, data=data, params=params, headers={"Content-Type": content_type}) as resp:
            if resp.status not in (200, 201):
                raise StorageError(f"upload to {url} failed: {resp.status} {(await resp.text())[:200]}")
        return url

    async def put_path(self, path: str, data: bytes, *, content_type: str) -> str:
        """Store bytes under a persistent filer path (proof clips, key frames); returns its URL."""
        url = f"{self.filer_url}/{path.lstrip('/')}"
        form = aiohttp.FormData()
        form.add_field("file", data, filename=path.rsplit("/", 1)[-1], content_type=content_type)
        async with self.session.post(url, data=form) as resp:
            if resp.status not in (200, 201):
                raise StorageError(f"filer upload to {path} failed: {resp.status} {(await resp.text())[:200]}")
        return url

    async def download(self, url: str) -> bytes:
        """The file at `url`, read in chunks and refused past max_download_bytes; a redirect is refused, not
        followed (the host check applies to the URL asked for, not to wherever an answer points)."""
        await self.check_url(url)
        cap = self.max_download_bytes
        async with self.session.get(url, allow_redirects=False) as resp:
            if resp.status == 404:
                raise FileGone(f"download of {url} failed: 404, not found")
            if 300 <= resp.status < 400:
                where = resp.headers.get("Location", "nowhere")
                raise RefusedDownload(f"download of {url} answered a redirect ({resp.status} to {where}): not followed")
            if resp.status != 200:
                raise StorageError(f"download of {url} failed: {resp.status}")
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
        async with self.session.head(url, allow_redirects=False) as resp:
            if resp.status == 404:
                raise FileGone(f"{url}: 404, not found")
            if resp.status != 200 or resp.content_length is None:
                raise StorageError(f"size of {url} unknown: {resp.status}")
            return resp.content_length

    @asynccontextmanager
    async def stream(self, url: str, byte_range: tuple[int, int] | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        """The file's bytes (or bytes first..last, inclusive) in chunks, as SeaweedFS sends them: for a caller that
        passes them on, never holding the file whole."""
        await self.check_url(url)
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else None
        async with self.session.get(url, headers=headers, allow_redirects=False, timeout=_STREAM_TIMEOUT) as resp:
            if resp.status == 404:
                raise FileGone(f"{url}: 404, not found")
            if resp.status != (206 if byte_range else 200):
                raise StorageError(f"reading {url} failed: {resp.status}")
            yield resp.content.iter_chunked(_CHUNK)

    async def delete(self, url: str) -> None:
        await self.check_url(url)
        async with self.session.delete(url) as resp:
            if resp.status not in (200, 202, 204, 404):
                raise StorageError(f"delete of {url} failed: {resp.status}")
