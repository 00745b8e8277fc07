"""The api service: reads what the fleet keeps in Redis and SeaweedFS and serves it; it writes nothing."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from services.api.app import build_app
from services.api.queries import FleetView
from services.api.settings import ApiSettings
from shared.keys import RedisKeys
from shared.lifecycle import Service, StartupError


class ApiService(Service[ApiSettings]):
    name = "api"

    def __init__(self, settings: ApiSettings) -> None:
        super().__init__(settings)
        self.url = ""  # where it listens, once started
        self._runner: web.AppRunner | None = None

    async def start(self, stack: AsyncExitStack) -> None:
        s = self.settings
        redis = await self.open_redis(stack)
        storage = await self.open_storage(stack)
        unreadable = self.metrics.counter("unreadable_records", "records in Redis skipped as unreadable", ("kind",))
        app = build_app(s, FleetView(redis, RedisKeys(s), unreadable), storage)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        stack.push_async_callback(self._runner.cleanup)
        site = web.TCPSite(self._runner, s.api_host, s.api_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"the api cannot listen on {s.api_host}:{s.api_port}: {exc.strerror}") from None
        port = self._runner.addresses[0][1]
        host = "127.0.0.1" if s.api_host in ("0.0.0.0", "") else s.api_host
        self.url = f"http://{host}:{port}/"
        self.log.info("dashboard at %s%s", self.url, " (token required)" if s.api_token.get_secret_value() else "")

    async def run(self) -> None:
        await self.stop_event.wait()

    def health(self) -> dict[str, Any]:
        # The api has no bus; it is healthy while it listens.
        return {"ok": bool(self.url), "service": self.name, "instance": self.instance, "url": self.url}
