"""An in-memory stand-in for shared.bus.Bus, for unit tests of a service's decisions without servers.

It implements the surface the router and the registrator use (subjects, decode with dead letters, JetStream
and core publishes, durable pull consumers, backlog and lag) and records what was sent. A test hands messages
to a consumer with `deliver`, and reads what the service published with `sent`. Integration tests keep the real
bus on a real nats-server: this fake never replaces NATS where the bus itself is under test.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared.bus import ConsumerLag, Outgoing
from shared.contracts import Contract, ContractError
from shared.settings import VigilSettings
from shared.subjects import Subjects

C = TypeVar("C", bound=Contract)


@dataclass
class FakeMsg:
    """A JetStream message as a consumer sees it, remembering how it was answered."""

    subject: str
    data: bytes
    acked: bool = False
    naked: bool = False
    in_progress_acks: int = 0

    @classmethod
    def of(cls, subject: str, message: Contract) -> FakeMsg:
        return cls(subject, message.to_bytes())

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        self.naked = True

    async def in_progress(self) -> None:
        self.in_progress_acks += 1


@dataclass
class FakeSubscription:
    """A durable pull consumer: `fetch` returns what was delivered to it, in order."""

    queue: asyncio.Queue[FakeMsg] = field(default_factory=asyncio.Queue)
    seen: list[FakeMsg] = field(default_factory=list)  # everything delivered, fetched or not

    async def fetch(self, batch: int = 1, timeout: float | None = 5.0) -> list[FakeMsg]:
        # nats-py raises a timeout when no message came, and shared.bus.fetch turns that into [].
        first = await asyncio.wait_for(self.queue.get(), timeout)
        msgs = [first]
        while len(msgs) < batch and not self.queue.empty():
            msgs.append(self.queue.get_nowait())
        return msgs

    async def unsubscribe(self) -> None:
        pass


class FakeBus:
    def __init__(self, settings: VigilSettings, service: str = "test") -> None:
        self.settings = settings
        self.service = service
        self.subjects = Subjects.from_settings(settings)
        self.published: list[tuple[str, bytes]] = []  # JetStream and core publishes, in order
        self.dead_letters: list[tuple[str, bytes, str]] = []  # (subject, data, reason)
        self.streams: list[str] = []  # streams this service declared (ensure_stream)
        self.backlogs: dict[str, int | None] = {}  # stream -> what backlog() answers (0 if unset; None: NATS away)
        self.failing: set[str] = set()  # subjects whose publishes fail, as with NATS away past every retry
        self._consumers: defaultdict[str, FakeSubscription] = defaultdict(FakeSubscription)

    # -- what tests use --------------------------------------------------------------------------

    def deliver(self, durable: str, *msgs: FakeMsg) -> None:
        """Hand messages to the consumer `durable` (created on first use, as its service would)."""
        for msg in msgs:
            self._consumers[durable].queue.put_nowait(msg)
            self._consumers[durable].seen.append(msg)

    def pending(self, durable: str) -> int:
        """Messages delivered to `durable` and not yet fetched by the service."""
        return self._consumers[durable].queue.qsize()

    def sent(self, subject: str, cls: type[C]) -> list[C]:
        """What was published on `subject`, decoded."""
        return [cls.from_bytes(data) for s, data in self.published if s == subject]

    def subjects_sent(self) -> list[str]:
        return [s for s, _ in self.published]

    # -- the Bus surface -------------------------------------------------------------------------

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ensure_stream(self, config: Any) -> None:
        self.streams.append(config.name)

    async def publish(self, subject: str, message: Contract, *, timeout: float | None = None) -> None:
        await self.publish_out(Outgoing.of(subject, message), timeout=timeout)

    async def publish_out(self, out: Outgoing, *, timeout: float | None = None) -> None:
        if out.subject in self.failing:
            raise ConnectionError(f"could not publish on {out.subject} (FakeBus.failing)")
        self.published.append((out.subject, out.data))

    async def publish_many(self, items: list[Outgoing], *, timeout: float = 5.0) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for out in items:
            try:
                await self.publish_out(out)
                outcomes.append(None)
            except ConnectionError as exc:
                outcomes.append(exc)
        return outcomes

    async def publish_core(self, subject: str, message: Contract) -> None:
        self.published.append((subject, message.to_bytes()))

    async def decode(self, msg: FakeMsg, cls: type[C]) -> C | None:
        try:
            return cls.from_bytes(msg.data)
        except ContractError as exc:
            await self.dead_letter(msg.subject, msg.data, str(exc))
            return None

    async def dead_letter(self, subject: str, data: bytes, reason: str) -> None:
        self.dead_letters.append((subject, data, reason))

    async def durable_pull(self, stream: str, durable: str, **consumer: Any) -> FakeSubscription:
        return self._consumers[durable]

    async def bind_when_ready(self, stream: str, durable: str, stop: asyncio.Event, **consumer: Any) -> FakeSubscription:
        return self._consumers[durable]

    async def stream_subjects(self, stream: str, subjects_filter: str) -> set[str]:
        """The subjects of every message delivered so far (the stream keeps them), whatever the filter."""
        return {msg.subject for sub in self._consumers.values() for msg in sub.seen}

    async def acked_any(self, stream: str, durable: str) -> bool:
        return False

    async def backlog(self, stream: str, durable: str) -> int | None:
        return self.backlogs.get(stream, 0)

    async def lag(self, stream: str, durable: str) -> ConsumerLag:
        return ConsumerLag(self.pending(durable), 0.0)
