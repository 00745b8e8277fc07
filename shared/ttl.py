"""SeaweedFS TTL strings ("30s", "5m", "1h", "2d") and their length in seconds."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
_TTL = re.compile(r"^([1-9][0-9]{0,2})([smhdwMy])$")


def parse_ttl(value: str) -> int:
    """Seconds in a SeaweedFS TTL; SeaweedFS stores the count in one byte, hence at most 3 digits."""
    match = _TTL.match(value)
    if not match or int(match.group(1)) > 255:
        raise ValueError(f"TTL {value!r} is not a SeaweedFS TTL such as 30s, 5m, 1h or 2d (count 1-255)")
    return int(match.group(1)) * _UNITS[match.group(2)]
