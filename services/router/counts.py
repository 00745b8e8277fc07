"""What the router replicas routed per source, counted exactly once per frame even across crashes.

A frame is acked only after its tasks are published and counted, so a router killed in between has the
frame delivered again, and routes it again. Its tasks going out twice is harmless (results are deduplicated
by frame); counting it twice is not, since the summary of an ended source must match the results. So each
frame's count is guarded by one bit per `seq` (Redis SETBIT returns the old bit): the first time counts,
a redelivery does not. Bits live in blocks of BLOCK frames that expire with the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis

from shared.keys import RedisKeys

BLOCK = 1 << 16  # frames per bitmap key: 8 KiB each
COUNTS_TTL = 7 * 24 * 3600  # counts and bits outlive any router restart, and then go

# ARGV: routed prefix, totals prefix, bits prefix, block, ttl, then per frame: source, feed, seq, n, n fields.
# The bits and the routed counts are per feed (a run of a source: each run counts from seq 0), the totals the
# api serves per source. Returns one 0/1 per frame: whether it was counted now.
_COUNT_ONCE = """
local routed, totals, bits = ARGV[1], ARGV[2], ARGV[3]
local block, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local out, i = {}, 6
while i <= #ARGV do
  local source, feed, seq, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local bitkey = bits .. feed .. ':' .. math.floor(seq / block)
  local fresh = redis.call('SETBIT', bitkey, seq % block, 1) == 0
  redis.call('EXPIRE', bitkey, ttl)
  if fresh then
    for j = 1, n do
      local f = ARGV[i + 3 + j]
      redis.call('HINCRBY', routed .. feed, f, 1)
      redis.call('HINCRBY', totals .. source, f, 1)
    end
    redis.call('EXPIRE', routed .. feed, ttl)
  end
  out[#out + 1] = fresh and 1 or 0
  i = i + 4 + n
end
return out
"""


@dataclass
class FrameCount:
    source_id: str
    feed: str  # the source's run (shared.contracts.feed_key)
    seq: int
    fields: list[str] = field(default_factory=list)  # ROUTED_FRAMES, ROUTED_TASKS + model, ...


class RoutedCounts:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._script = redis.register_script(_COUNT_ONCE)

    async def read(self, feed: str) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.routed(feed)))  # no decode_responses: bytes
        return {k.decode(): int(v) for k, v in raw.items()}

    async def forget(self, feed: str) -> None:
        """Once summarised; a run that never ended (a crashed reader) has its counts expire with COUNTS_TTL."""
        bits = [k async for k in self.redis.scan_iter(match=f"{self.keys.routed_bits(feed)}:*", count=500)]
        await self.redis.delete(self.keys.routed(feed), *bits)

    async def add(self, frames: list[FrameCount]) -> list[bool]:
        """Count each frame's fields unless that frame was counted before; True where it was counted now."""
        if not frames:
            return []
        args: list[str | int] = [self.keys.routed(""), self.keys.totals(""), self.keys.routed_bits(""), BLOCK, COUNTS_TTL]
        for frame in frames:
            args += [frame.source_id, frame.feed, frame.seq, len(frame.fields), *frame.fields]
        return [bool(x) for x in await self._script(keys=[], args=args)]
