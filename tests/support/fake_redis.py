"""A write-only Redis stand-in, for unit tests of the registrator's decisions beside tests/support/fake_bus.py.

The registrator writes its state and event records (RegistratorState, EventStore) in pipelines and a Lua script,
and reads them back only when it starts. Tests that skip its start need the writes to succeed and, for events,
to be readable: commands are recorded, and each event record the store's script saves is kept by id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from shared.contracts import Event


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.queued: list[tuple[str, tuple[Any, ...]]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, command: str) -> Callable[..., FakePipeline]:
        def queue(*args: Any, **kwargs: Any) -> FakePipeline:
            self.queued.append((command, args))
            return self

        return queue

    async def execute(self) -> list[Any]:
        self.redis.commands += self.queued
        done, self.queued = self.queued, []
        return [1] * len(done)


class FakeScript:
    """EventStore's replace script: ARGV is (event id, start, JSON record)."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis

    async def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> int:
        self.redis.events[str(args[0])] = Event.model_validate_json(args[2])
        return 1


class FakeRedis:
    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []  # what pipelines executed, in order
        self.events: dict[str, Event] = {}  # event id -> its last saved record

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def register_script(self, script: str) -> FakeScript:
        return FakeScript(self)

    # Reads of what a replica taking a source finds saved: nothing, as after a first start.
    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {}

    async def smembers(self, key: str) -> set[bytes]:
        return set()

    async def scan_iter(self, match: str, count: int = 0) -> AsyncIterator[bytes]:
        for key in ():
            yield key

    async def hset(self, key: str, field: str | None = None, value: Any = None, mapping: dict[str, Any] | None = None) -> int:
        self.commands.append(("hset", (key, field, value) if mapping is None else (key, mapping)))
        return 1

    async def hdel(self, key: str, *fields: str) -> int:
        self.commands.append(("hdel", (key, *fields)))
        return len(fields)


class SoleHolder:
    """services.registrator.leases.SourceLeases for one replica alone: it holds every source, and its fenced writes
    are plain pipelines of the fake (tests/integration/test_registrator_scaling.py runs the real leases)."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.tokens: dict[str, int] = {}

    async def heartbeat(self) -> list[str]:
        return []

    async def leave(self) -> None:
        pass

    async def acquire(self, source_id: str) -> bool:
        self.tokens[source_id] = 1
        return True

    async def renew(self, source_id: str) -> bool:
        return source_id in self.tokens

    async def release(self, source_id: str) -> None:
        self.tokens.pop(source_id, None)

    def forget(self, source_id: str) -> None:
        self.tokens.pop(source_id, None)

    async def write_fenced(self, source_id: str, fill: Callable[[Any], Awaitable[None]]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            await fill(pipe)
            await pipe.execute()
