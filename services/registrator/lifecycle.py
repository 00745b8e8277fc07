"""What the registrator's units need of the running service, and nothing more of it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from nats.aio.msg import Msg

T = TypeVar("T")


class Lifecycle(Protocol):
    """What the units need of the running service: its stop, its pauses, its retried Redis writes and its log.
    `shared.lifecycle.Service` is one; the units never see the rest of it."""

    stop_event: asyncio.Event
    log: logging.Logger  # one logger for the registrator: its lines read the same, whichever unit writes them

    async def pause(self, seconds: float) -> bool: ...

    async def redis_must(self, what: str, attempt: Callable[[], Awaitable[T]], *, hold: Sequence[Msg] = ...) -> T: ...
