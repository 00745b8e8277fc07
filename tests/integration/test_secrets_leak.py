"""A camera password never leaves the reader: not in its logs, Redis, the bus, /healthz or the api.

PyAV's own error text quotes the URL it was given, password and all; this runs the reader on such a URL
(a closed port, so the error is the real one) and looks everywhere that text could have gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import nats
import pytest

from fleet.clients import connect_nats, redis_client
from fleet.servers import free_ports
from services.api.service import ApiService
from services.api.settings import ApiSettings
from services.reader.service import ReaderService
from services.reader.settings import ReaderSettings
from shared.keys import RedisKeys
from tests.integration.helpers import running
from tests.integration.test_reader import read_stream
from tests.support.settings import settings_from

# Every character the old redact() tripped on: a raw @, a colon, a percent-encoded @.
SECRETS = ("S3cr@t", "pa%40ss", "S3cr")


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


async def test_a_failing_rtsp_url_leaks_no_password(
    service_env: dict[str, str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    (closed,) = free_ports(1)  # nothing listens there once free_ports returns: connection refused
    url = f"rtsp://admin:S3cr@t:pa%40ss@127.0.0.1:{closed}/x"
    env = service_env | {
        "video_source": url,
        "max_reconnects": "1",
        "reconnect_initial": "0.2",
        "reconnect_max": "0.5",
        "open_timeout": "2",
    }
    reader = ReaderService(settings_from(ReaderSettings, env))  # type: ignore[arg-type]
    watcher = await connect_nats(service_env)
    health_sub = await watcher.subscribe(reader.bus.subjects.source_health_all)
    with caplog.at_level(logging.DEBUG):
        await asyncio.wait_for(reader.execute(), 60)

    # The bus: health messages, and the status on the frames stream.
    health_messages = []
    while True:
        try:
            health_messages.append((await health_sub.next_msg(timeout=0.5)).data.decode())
        except nats.errors.TimeoutError:
            break
    await watcher.close()
    _, statuses = await read_stream(reader)
    assert statuses and statuses[-1].error and "Connection refused" in statuses[-1].error  # PyAV's own words
    # Redis: the health key, and what /healthz would answer.
    redis = redis_client(service_env)
    try:
        stored = (await redis.get(RedisKeys(reader.settings).source_health(reader.configs[0].source_id)) or b"").decode()
        # The api: /api/v1/sources, over the same Redis.
        api = ApiService(settings_from(ApiSettings, service_env, api_port=0))  # type: ignore[arg-type]
        async with (
            running(api, ready=lambda s: bool(s.url)),
            aiohttp.ClientSession() as http,
            http.get(f"{api.url}api/v1/sources") as resp,
        ):
            listed = await resp.text()
    finally:
        await redis.aclose()

    places = {
        "logs": caplog.text,
        "NATS health": "\n".join(health_messages),
        "frames stream status": "\n".join(s.to_bytes().decode() for s in statuses),
        "Redis health key": stored,
        "/healthz": json.dumps(reader.health()),
        "/api/v1/sources": listed,
    }
    for place, text in places.items():
        assert "127.0.0.1" in text, f"{place} says nothing of the source"  # the test looked at the right thing
        assert leaked(text) == [], f"the password leaked into {place}"
    assert "rtsp://***@127.0.0.1" in stored and "Connection refused" in stored
