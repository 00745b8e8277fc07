"""NATS, Redis and SeaweedFS clients with a user's credentials, for whatever is not a service: the fleet runner,
tests and benchmarks. The servers refuse anyone without credentials, so a bare `nats.connect(url)` no longer
works, nor an `aiohttp.ClientSession()` to SeaweedFS's master (it asks for a client certificate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import nats
from nats.aio.client import Client
from redis.asyncio import Redis

from shared.credentials import nats_login, redis_login, tls_context
from shared.settings import VigilSettings


def settings_of(env: Mapping[str, str] | VigilSettings) -> VigilSettings:
    """Settings from an environment mapping (`ServerSet.env()`, a test's `service_env`); its other keys are ignored."""
    if isinstance(env, VigilSettings):
        return env
    # model_validate reads the mapping only, not the environment or a .env file.
    return VigilSettings.model_validate({k: v for k, v in env.items() if k in VigilSettings.model_fields})


async def connect_nats(env: Mapping[str, str] | VigilSettings, **options: Any) -> Client:
    settings = settings_of(env)
    return await nats.connect(settings.nats_servers, **nats_login(settings), **options)


def redis_client(env: Mapping[str, str] | VigilSettings, **options: Any) -> Redis:
    settings = settings_of(env)
    return Redis(host=settings.redis_host, port=settings.redis_port, **redis_login(settings), **options)


def http_session(env: Mapping[str, str] | VigilSettings, **options: Any) -> aiohttp.ClientSession:
    """An HTTP session that shows the user's client certificate to https:// servers and checks theirs."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls_context(settings_of(env))), **options)
