"""Credentials out of text: one scrubber for every log record, error string and health field.

A URL's userinfo (`scheme://user:password@host`) is the one place a secret rides inside ordinary text: a
camera's RTSP URL in PyAV's error message, a Redis or NATS URL in a connection error. Whatever text leaves a
service (a log line, `last_error`, a status on the bus, an api answer) passes through `scrub` first.
"""

from __future__ import annotations

import re

# The userinfo runs from `://` to the last `@` before the authority ends (RFC 3986 §3.2: `/`, `?`, `#`), so a
# password that holds `@` or `:` (raw, or as `%40`) goes whole. Quotes, spaces and brackets end it too: that
# is how URLs sit inside error messages ('rtsp://...', <http://...>).
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/?#'\"<>\[\]]*@", re.IGNORECASE)
HIDDEN = "***"


def scrub(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `***`: safe to log, store and show."""
    if "@" not in text:  # the common case, and the cheap one
        return text
    return _USERINFO.sub(rf"\1{HIDDEN}@", text)
