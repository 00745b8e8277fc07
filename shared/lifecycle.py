"""The one service lifecycle: start resources, run stages, stop on SIGTERM/SIGINT through one path."""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from typing import Any, Generic, TypeVar

from nats.aio.msg import Msg
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.bus import Bus
from shared.credentials import CredentialsError, redis_login
from shared.logs import setup_logging
from shared.metrics import Metrics, start_http
from shared.pause import sleep_unless_stopped
from shared.retry import InfrastructureUnavailable, backoff_delays, retry_until
from shared.settings import VigilSettings, load_settings
from shared.storage import SeaweedStorage

S = TypeVar("S", bound=VigilSettings)
T = TypeVar("T")
# What Redis answers while it is away or still loading its append-only file after a restart.
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError)


class StartupError(RuntimeError):
    """A problem that makes starting pointless (bad input file, missing model): one clear line, exit 1."""


class Stopping(Exception):
    """The service was asked to stop while waiting for a server: the work in hand stays unacked, for redelivery."""


class Service(abc.ABC, Generic[S]):
    name: str = "service"

    def __init__(self, settings: S) -> None:
        self.settings = settings
        self.instance = settings.instance or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics(self.name)
        self.log = logging.getLogger(f"vigil.{self.name}")
        self.stop_event = asyncio.Event()
        self.exit_code = 0  # a service that ran but failed at its job (a source that broke) says so here
        self.bus = Bus(settings, self.name, self.instance, self.metrics)

    # Resources -----------------------------------------------------------------------------

    async def open_bus(self, stack: AsyncExitStack) -> Bus:
        await self.bus.connect()
        stack.push_async_callback(self.bus.close)
        return self.bus

    async def open_redis(self, stack: AsyncExitStack) -> Redis:
        redis = Redis(
            host=self.settings.redis_host,
            port=self.settings.redis_port,
            **redis_login(self.settings),
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_connect_timeout=2.0,
            health_check_interval=10,
        )
        stack.push_async_callback(redis.aclose)

        async def ping() -> object:
            try:
                return await redis.ping()
            except (AuthenticationError, NoPermissionError) as exc:
                # Not a server still starting: waiting would not help.
                raise CredentialsError(
                    f"Redis refused user {self.settings.redis_user or '(default)'!r}: {exc}; "
                    "check redis_user and redis_password_file"
                ) from None

        await retry_until("Redis", ping, timeout=self.settings.startup_timeout, log=self.log, retry_on=(RedisError, OSError))
        return redis

    async def open_storage(self, stack: AsyncExitStack, *, max_connections: int = 16) -> SeaweedStorage:
        storage = await stack.enter_async_context(SeaweedStorage(self.settings, max_connections=max_connections))
        await storage.wait_ready()
        return storage

    # What each service provides ---------------------------------------------------------------

    @abc.abstractmethod
    async def start(self, stack: AsyncExitStack) -> None:
        """Acquire resources (entered into `stack`, released in reverse order)."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Run until done or until `stop_event` is set, then return after draining in-flight work."""

    async def pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`, cut short by a stop; True when the service is stopping."""
        return await sleep_unless_stopped(self.stop_event, seconds)

    async def redis_must(self, what: str, attempt: Callable[[], Awaitable[T]], *, hold: Sequence[Msg] = ()) -> T:
        """A Redis write that must happen before the messages behind it are acked: retried with backoff for as long
        as Redis is away (its client's own retries last seconds; an outage may last minutes), the messages `hold`
        kept from redelivery meanwhile (in-progress acks). Raises Stopping if the service is asked to stop first."""
        delays = backoff_delays(0.2, 5.0)
        failing = False
        while True:
            try:
                result = await attempt()
            except REDIS_AWAY as exc:
                if not failing:
                    self.log.warning("Redis unreachable (%s); retrying until it is back: %r", what, exc)
                    failing = True
                for msg in hold:
                    with suppress(Exception):  # NATS away too: redelivery is the fallback
                        await msg.in_progress()
                if await self.pause(next(delays)):
                    raise Stopping(what) from None
                continue
            if failing:
                self.log.info("Redis is back (%s)", what)
            return result

    def health(self) -> dict[str, Any]:
        nc = self.bus.nc
        return {"ok": bool(nc and nc.is_connected), "service": self.name, "instance": self.instance}

    # Driving ------------------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen > 1:
                self.log.warning("second %s: exiting now", signal.Signals(signum).name)
                os._exit(130)
            self.log.info("%s: stopping (send again to force)", signal.Signals(signum).name)
            self.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await self.execute()

    async def execute(self) -> None:
        """Start, run and release resources; `stop_event` ends it (tests drive services this way)."""
        async with AsyncExitStack() as stack:
            runner = await start_http(self.metrics, self.health, self.settings.metrics_host, self.settings.metrics_port)
            if runner is not None:
                stack.push_async_callback(runner.cleanup)
            await self.start(stack)
            self.log.info("started (instance %s)", self.instance)
            await self.run()
        self.log.info("stopped")


def main(service_cls: type[Service[S]], settings_cls: type[S], argv: list[str] | None = None) -> None:
    settings = load_settings(settings_cls, argv)
    log = setup_logging(service_cls.name, settings.log_level, settings.log_json)
    try:
        from uvloop import run
    except ImportError:  # uvloop is optional on platforms without it
        from asyncio import run  # type: ignore[assignment]
    service = service_cls(settings)
    try:
        run(service.serve())
    except (InfrastructureUnavailable, StartupError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    sys.exit(service.exit_code)
