"""The api's middlewares that every request goes through: errors as JSON, the access log, CORS, no-sniff."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from services.api.errors import ApiError, error_response
from services.api.handlers import (
    Handler,
)
from shared.secrets import scrub
from shared.storage import StorageError

log = logging.getLogger("vigil.api")
access_log = logging.getLogger("vigil.api.access")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:  # the router's own 404/405
        if exc.status < 400:
            raise
        # A 405 must say what is allowed (RFC 9110 §15.5.6); aiohttp puts it in the exception's headers.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, exc.reason, allow)
    except StorageError as exc:
        log.warning("proof unavailable: %s", exc)
        return error_response(503, "the proof storage is unavailable; try again")
    except RedisError as exc:
        log.warning("event store unavailable: %s", exc)
        return error_response(503, "the event store is unavailable; try again")
    except Exception:  # one bad request must not take the api down
        log.exception("request failed: %s %s", request.method, request.path)
        return error_response(500, "internal error")


# Query parameters whose values are never logged, whatever route they come with.
_SECRET_PARAM = re.compile(r"([?&](?:[^=&]*(?:token|password|secret|key)[^=&]*)=)[^&]*", re.IGNORECASE)


@web.middleware
async def log_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: method, path (secret query values masked), status, milliseconds, client."""
    started = time.perf_counter()
    status = 500  # unless the handler answers
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects raised by handlers
        status = exc.status
        raise
    finally:
        target = scrub(_SECRET_PARAM.sub(r"\1***", request.rel_url.raw_path_qs))
        ms = (time.perf_counter() - started) * 1000
        access_log.info("%s %s %d %.1f ms %s", request.method, target, status, ms, request.remote or "-")


def cors(origins: list[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def allow(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Range",
                    "Access-Control-Max-Age": "600",
                },
            )
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin or ""
            response.headers["Vary"] = "Origin"
        return response

    return allow


@web.middleware
async def no_sniff(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
