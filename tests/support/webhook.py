"""A webhook receiver for tests: a real aiohttp server on a free port that checks each request's signature and
answers as told (failures first, or per event)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Answer = Callable[[dict[str, Any]], int]  # the notice's JSON -> the HTTP status to answer


@dataclass
class Request:
    status: int
    notice: dict[str, Any]
    signed: bool  # X-Vigil-Signature matched the body under the shared secret


@dataclass
class Receiver:
    secret: bytes
    answer: Answer = lambda notice: 200  # the default: take everything
    requests: list[Request] = field(default_factory=list)
    hold: asyncio.Event | None = None  # while set to an unset event, requests wait (a receiver that hangs)
    held: int = 0  # requests that came while it hung
    url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [r.notice for r in self.requests if r.status == 200]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(request.headers.get("X-Vigil-Signature", ""), expected)
        notice = json.loads(body)
        held = self.hold is not None and not self.hold.is_set()
        self.held += held
        if self.hold is not None:
            await self.hold.wait()
        # A request that was held answers 503 once let go: its sender may be gone, and must not count it delivered.
        status = 401 if not signed else 503 if held else self.answer(notice)
        self.requests.append(Request(status, notice, signed))
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def fail_first(times: int, status: int = 500) -> Answer:
    """Answer `status` to the first `times` requests, then 200."""
    seen = [0]

    def answer(notice: dict[str, Any]) -> int:
        seen[0] += 1
        return status if seen[0] <= times else 200

    return answer
