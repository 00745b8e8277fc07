"""Access control over HTTP (the rules themselves are in auth.py): the bearer-token and session middleware, and
the login and logout routes."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.api.auth import SESSION_COOKIE, FailedLogins, Sessions
from services.api.errors import error_response
from services.api.handlers import (
    PAGE_HEADERS,
    Handler,
)

log = logging.getLogger("vigil.api")


# Reachable without a session, besides the public routes of the table: probes and the login page.
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/static/style.css"})
_NEEDS_TOKEN = "a valid token is required: Authorization: Bearer <token>, or a session from /login"


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth is None:
        return None
    return auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""


def _too_many(wait: float) -> web.Response:
    seconds = max(1, round(wait))
    return error_response(
        429, f"too many failed logins from this address; try again in {seconds} s", {"Retry-After": str(seconds)}
    )


def token_auth(
    token: str, sessions: Sessions, failures: FailedLogins, public: frozenset[str]
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """A bearer token (programs) or a session cookie (browsers); wrong tokens count against the client address."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        client = request.remote or "unknown"
        if wait := failures.retry_after(client):
            return _too_many(wait)
        bearer = _bearer(request)
        if bearer is not None:
            if hmac.compare_digest(bearer.encode(), token.encode()):
                return await handler(request)
            failures.fail(client)
            log.warning("wrong token from %s for %s %s", client, request.method, request.path)
        elif sessions.valid(request.cookies.get(SESSION_COOKIE, "")):
            return await handler(request)
        elif request.path == "/":
            raise web.HTTPSeeOther("/login")  # a person: the login page, not a JSON error
        return error_response(401, _NEEDS_TOKEN, {"WWW-Authenticate": "Bearer"})

    return check


def login_routes(app: web.Application, token: str, sessions: Sessions, failures: FailedLogins, secure: bool) -> None:
    """GET /login: a form; POST /login: the token in, a session cookie out (never the token); POST /logout."""

    async def page(request: web.Request) -> web.Response:
        return _login_page()

    async def log_in(request: web.Request) -> web.StreamResponse:
        client = request.remote or "unknown"
        if wait := failures.retry_after(client):
            return _too_many(wait)
        given = (await request.post()).get("token", "")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
            failures.fail(client)
            log.warning("failed login from %s", client)
            return _login_page("That token is not right.", 401)
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(
            SESSION_COOKIE,
            sessions.issue(),
            max_age=int(sessions.lifetime),
            httponly=True,
            samesite="Strict",
            secure=secure or request.secure,
            path="/",
        )
        return response

    async def log_out(request: web.Request) -> web.StreamResponse:
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    app.router.add_get("/login", page)
    app.router.add_post("/login", log_in)
    app.router.add_post("/logout", log_out)


def _login_page(message: str = "", status: int = 200) -> web.Response:
    note = f'<p role="alert">{message}</p>' if message else ""  # a fixed text of ours, never the request's
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Vigil: log in</title>'
        '<link rel="stylesheet" href="/static/style.css"></head><body><main><h1>Vigil</h1>'
        f'{note}<form method="post" action="/login"><label>Token <input type="password" name="token" '
        'autocomplete="current-password" required autofocus></label> <button type="submit">Log in</button>'
        "</form></main></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=PAGE_HEADERS)
