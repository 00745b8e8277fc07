"""Waiting for infrastructure with backoff, and saying clearly what we wait for."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class InfrastructureUnavailable(RuntimeError):
    """A server did not answer within the startup timeout."""


def backoff_delays(initial: float = 0.2, maximum: float = 5.0) -> Iterator[float]:
    """Exponential backoff with full jitter, so a restarted fleet does not reconnect in lockstep."""
    delay = initial
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(delay * 2, maximum)


async def retry_until(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    log: logging.Logger,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call `attempt` until it succeeds; log the first failure once, then raise a clear error at `timeout`."""
    deadline = time.monotonic() + timeout
    delays = backoff_delays()
    warned = False
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            if time.monotonic() >= deadline:
                raise InfrastructureUnavailable(f"{what} unreachable after {timeout:.0f} s: {exc!r}") from exc
            if not warned:
                log.warning("waiting for %s: %r", what, exc)
                warned = True
            await asyncio.sleep(next(delays))
