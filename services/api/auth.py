"""Who may use the api: the token rules, signed session cookies, and a limit on failed logins.

- A token is at least 32 characters, and an api that other machines can reach refuses to start without one
  (ApiSettings checks both).
- Programs send `Authorization: Bearer <token>`. People log in once at /login and get a session cookie: an
  expiry time and its HMAC, keyed by the token, so the cookie never holds the token, expires by itself, and
  every session ends when the token changes.
- Each client address may fail a handful of times a minute; then it is answered 429 until the minute is over.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections import OrderedDict, deque

MIN_TOKEN_CHARS = 32
# A token of 32 characters drawn from few symbols ("aaaa...", "12121212...") is not random: refused too.
MIN_DISTINCT_CHARS = 10
SESSION_COOKIE = "vigil_session"
GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def token_problem(token: str) -> str | None:
    """Why `token` is not good enough, or None."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"api_token has {len(token)} characters; it needs at least {MIN_TOKEN_CHARS} random ones: make one with {GENERATE}"
    if len(set(token)) < MIN_DISTINCT_CHARS:
        return f"api_token has only {len(set(token))} distinct characters: it is not random; make one with {GENERATE}"
    return None


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`; an empty host or 0.0.0.0 is every address, so no."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


class Sessions:
    """Session cookies `<expiry>.<hmac-sha256(expiry)>`, keyed by a key derived from the token."""

    def __init__(self, token: str, lifetime_seconds: float) -> None:
        self._key = hmac.new(token.encode(), b"vigil api session", hashlib.sha256).digest()
        self.lifetime = lifetime_seconds

    def _sign(self, expires: str) -> str:
        return hmac.new(self._key, expires.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        expires = str(int((time.time() if now is None else now) + self.lifetime))
        return f"{expires}.{self._sign(expires)}"

    def valid(self, cookie: str, now: float | None = None) -> bool:
        expires, _, signature = cookie.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(signature, self._sign(expires)):
            return False
        return int(expires) > (time.time() if now is None else now)


class FailedLogins:
    """Failures per client address in a sliding window; an address over the limit is refused until its oldest
    failure leaves the window. Bounded: past `max_addresses` the address seen longest ago is forgotten."""

    def __init__(self, limit: int, window_seconds: float = 60.0, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window = window_seconds
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        times = self._failures.get(address)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return 0.0
        return times[0] + self.window - now if len(times) >= self.limit else 0.0

    def fail(self, address: str, now: float | None = None) -> None:
        times = self._failures.setdefault(address, deque())
        self._failures.move_to_end(address)
        times.append(time.monotonic() if now is None else now)
        while len(times) > self.limit:
            times.popleft()
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
