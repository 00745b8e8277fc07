"""Which replica of a role (registrator, reader) holds which source: rendezvous hashing with bounded loads over the
role's live replicas says who should, a Redis lease with a fencing token says who does.

Every replica heartbeats into a sorted set scored by expiry, and computes the same assignment from the known sources
and the live replicas: each source goes to the replica with the highest hash of (source, replica) that is not yet
full, full being the sources' even share rounded up. All replicas agree without talking, and the busiest holds no
more than that share, whereas plain hashing gave 3 of 4 sources to one of two replicas about half the time: the
busiest replica is what limits the fleet. A joining or leaving replica moves about its own share (200 sources, 2 to
3 replicas: 68 moved, against 67 at best). A replica takes a source only through its lease (SET NX with a TTL,
renewed), so two replicas never hold one source at once, even while their views of who is alive differ; a replica
that stalls past the TTL loses the lease, and the fencing check in `fenced` stops its late writes (the transaction
WATCHes the lease).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from shared.keys import RedisKeys

# KEYS: lease, tokens hash; ARGV: source, replica, ttl ms. A new fencing token for a new holder; the same lease
# renewed for its holder; nil when another replica holds it.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  local holder, token = string.match(held, '^(%S+) (%d+)$')
  if holder == ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return tonumber(token)
  end
  return nil
end
local token = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. token, 'PX', ARGV[3])
return token
"""

# KEYS: lease; ARGV: the holder's value. Only the holder lets go.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


Fill = Callable[[Pipeline], Awaitable[None]]


class LeaseLost(Exception):
    """Another replica holds the source now: this one must drop it without writing."""


def _score(source_id: str, replica: str) -> bytes:
    return hashlib.blake2b(f"{source_id}\0{replica}".encode(), digest_size=8).digest()


def assign(sources: Iterable[str], replicas: Iterable[str]) -> dict[str, str]:
    """Source -> replica: each source, in a fixed order, to its highest-hashing replica with room; a replica has
    room for ceil(sources / replicas). Depends only on the two sets, so every replica computes the same."""
    alive, known = sorted(set(replicas)), sorted(set(sources))
    if not alive:
        return {}
    room = dict.fromkeys(alive, -(-len(known) // len(alive)))
    owners: dict[str, str] = {}
    for source_id in known:
        owner = max((r for r in alive if room[r]), key=lambda r: _score(source_id, r))
        owners[source_id] = owner
        room[owner] -= 1
    return owners


class SourceLeases:
    def __init__(self, redis: Redis, keys: RedisKeys, role: str, replica: str, ttl: float) -> None:
        self.redis = redis
        self.keys = keys
        self.role = role  # each role shares out its own sources: its own replica set, leases and tokens
        self.replica = replica
        self.ttl_ms = max(1, int(ttl * 1000))
        self.ttl = ttl
        self.tokens: dict[str, int] = {}  # the sources this replica holds, with their fencing tokens
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    def value(self, source_id: str) -> str:
        return f"{self.replica} {self.tokens[source_id]}"

    async def heartbeat(self) -> list[str]:
        """Say this replica is alive for one more TTL; returns the replicas alive now (this one included)."""
        now = time.time()
        key = self.keys.leases_replicas(self.role)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.replica: now + self.ttl})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrange(key, 0, -1)
            *_, members = await pipe.execute()
        return sorted(m.decode() for m in cast(list[bytes], members))

    async def leave(self) -> None:
        """Gone from the live set at once: the others take its sources without waiting for the heartbeat to expire."""
        await self.redis.zrem(self.keys.leases_replicas(self.role), self.replica)

    async def acquire(self, source_id: str) -> bool:
        """Take or renew the source's lease; False while another replica holds it."""
        keys = [self.keys.lease(self.role, source_id), self.keys.lease_tokens(self.role)]
        token = await self._acquire(keys=keys, args=[source_id, self.replica, self.ttl_ms])
        if token is None:
            self.tokens.pop(source_id, None)
            return False
        self.tokens[source_id] = int(token)
        return True

    async def renew(self, source_id: str) -> bool:
        """Keep a held lease; False when it was lost. A lease that lapsed (Redis away or restarted for longer than
        the TTL) and comes back with the very next token was held by nobody else meanwhile, so what this replica has
        in memory is still right; a later token means another replica held it: memory is stale, False."""
        before = self.tokens.get(source_id)
        if before is None or not await self.acquire(source_id):
            return False
        return self.tokens[source_id] in (before, before + 1)

    async def release(self, source_id: str) -> None:
        if source_id in self.tokens:
            await self._release(keys=[self.keys.lease(self.role, source_id)], args=[self.value(source_id)])
            del self.tokens[source_id]

    def forget(self, source_id: str) -> None:
        """Another replica holds the source now: let go of its token without touching the lease (it is not ours to
        release), so that no later write of this replica can pass the fence with it."""
        self.tokens.pop(source_id, None)

    async def holder(self, source_id: str) -> str | None:
        raw = cast(bytes | None, await self.redis.get(self.keys.lease(self.role, source_id)))
        return raw.decode().split(" ", 1)[0] if raw is not None else None

    @asynccontextmanager
    async def fenced(self, source_id: str) -> AsyncIterator[Pipeline]:
        """A transaction that commits only while this replica still holds the source: the lease is WATCHed, so a
        takeover between the check and EXEC aborts it. Our own renewal touches the key too, and a lease that lapsed
        is gone: both raise WatchError, and `write_fenced` renews and tries again. Raises LeaseLost otherwise."""
        lease = self.keys.lease(self.role, source_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(lease)
            held = cast(bytes | None, await pipe.get(lease))
            if held is None and source_id in self.tokens:
                raise WatchError(f"the lease of {source_id} lapsed")
            if source_id not in self.tokens or held is None or held.decode() != self.value(source_id):
                raise LeaseLost(source_id)
            pipe.multi()  # type: ignore[no-untyped-call]
            yield pipe

    async def write_fenced(self, source_id: str, fill: Fill, attempts: int = 5) -> None:
        """Run `fill(pipe)` and EXEC under the fence, retrying a transaction our own lease renewal aborted."""
        for _ in range(attempts):
            try:
                async with self.fenced(source_id) as pipe:
                    await fill(pipe)
                    await pipe.execute()
                return
            except WatchError:
                if not await self.renew(source_id):
                    raise LeaseLost(source_id) from None
        raise LeaseLost(source_id)


def plan_moves(me: str, replicas: list[str], known: set[str], held: set[str]) -> tuple[list[str], list[str]]:
    """(sources to try to take, sources to give up) for replica `me`: take what the assignment gives it and it does
    not hold, give up what it holds that the assignment now gives another live replica (one joined)."""
    alive = replicas if me in replicas else [*replicas, me]
    owners = assign(known, alive)  # a held source no other replica knows of yet stays where it is
    take = sorted(s for s in known - held if owners[s] == me)
    give_up = sorted(s for s in held & known if owners[s] != me)
    return take, give_up
