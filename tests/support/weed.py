"""SeaweedFS requests no service makes, signed with the servers' keys (LocalServers writes them): for tests
that play SeaweedFS's own part (a TTL that removes a frame) or an attacker's."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from fleet.clients import http_session
from fleet.servers import ServerSet
from shared import jwt


def sign(servers: ServerSet, key: str, claims: dict[str, object], seconds: int = 60) -> str:
    """A token for `claims`, expiring in `seconds`, signed with one of the servers' keys (`volume-write`, ...)."""
    return jwt.sign(servers.key_file(key).read_text(), {"exp": int(time.time()) + seconds, **claims})


def bearer(servers: ServerSet, key: str, claims: dict[str, object]) -> dict[str, str]:
    """The Authorization header of a request signed with one of the servers' keys."""
    return {"Authorization": f"Bearer {sign(servers, key, claims)}"}


def batch_fid(url: str) -> str:
    """The fid a volume token names for a frame's URL: `<volume>,<key>`, without a batch's `_<n>`."""
    return urlsplit(url).path.lstrip("/").split("_", 1)[0]


async def expire_frame(servers: ServerSet, url: str) -> None:
    """Remove a frame as its TTL would: a delete signed with the volume write key, which no service holds."""
    auth = bearer(servers, "volume-write", {"fid": batch_fid(url)})
    async with http_session(servers.env()) as http, http.delete(url, headers=auth) as resp:
        assert resp.status in (200, 202), f"delete of {url}: {resp.status} {await resp.text()}"
