"""HS256 JSON Web Tokens, as SeaweedFS checks them (golang-jwt, HMAC-SHA256): a few lines of the standard
library instead of a dependency, since signing is all Vigil does with them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def sign(key: str, claims: dict[str, Any]) -> str:
    """A token carrying `claims`, signed with `key` (its UTF-8 bytes, as weed uses the key string)."""
    signing_input = f"{_json(_HEADER)}.{_json(claims)}"
    mac = hmac.new(key.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a token, without checking its signature: for reading when a token someone else signed
    (the master's) runs out. Never for deciding whether to trust it. Empty when it is not a JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}
