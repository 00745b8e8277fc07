"""The credentials of a service's role, read from files when it connects (Compose mounts them as secrets):
its passwords and its TLS client certificate.

Only the file's path is a setting: the password (or SeaweedFS signing key) itself is never a settings value, so
it is never logged, printed by `--check-config` or shown in an error.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

from shared.retry import InfrastructureUnavailable
from shared.settings import VigilSettings


class NatsLogin(TypedDict, total=False):
    user: str
    password: str
    inbox_prefix: str
    tls: ssl.SSLContext


class RedisLogin(TypedDict, total=False):
    username: str
    password: str
    ssl: bool
    ssl_ca_certs: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_cert_reqs: str
    ssl_check_hostname: bool


class CredentialsError(InfrastructureUnavailable):
    """A password or key file that cannot be read: without it the service cannot reach NATS, Redis or SeaweedFS."""


def read_password(path: Path, setting: str, what: str = "the user's password") -> str:
    """The password (or key: `what`) in `path`, without its final newline (an editor or `echo` adds one)."""
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CredentialsError(f"cannot read {setting} {str(path)!r} ({reason}); create it or fix {setting}") from None
    if not password:
        raise CredentialsError(f"{setting} {str(path)!r} is empty; put {what} in it")
    return password


def nats_login(settings: VigilSettings) -> NatsLogin:
    """Keyword arguments of `nats.connect` for the service's NATS user; none without one.

    Each user gets an inbox prefix of its own, so its permissions can allow replies to it alone: with the
    shared `_INBOX.>` any user could read the replies (pulled messages included) meant for the others."""
    login: NatsLogin = {}
    if any(urlsplit(url).scheme == "tls" for url in settings.nats_servers):
        login["tls"] = tls_context(settings)
    if not settings.nats_user:
        return login
    login |= {"user": settings.nats_user, "inbox_prefix": inbox_prefix(settings.nats_user)}
    if settings.nats_password_file is not None:
        login["password"] = read_password(settings.nats_password_file, "nats_password_file")
    return login


def redis_login(settings: VigilSettings) -> RedisLogin:
    """Keyword arguments of `redis.asyncio.Redis` for the service's ACL user; none without one."""
    login: RedisLogin = {}
    if settings.redis_tls:
        tls_context(settings)  # the same checks, so a missing file gets the same clear error
        login |= {
            "ssl": True,
            "ssl_ca_certs": _optional(settings.tls_ca_file),
            "ssl_certfile": _optional(settings.tls_cert_file),
            "ssl_keyfile": _optional(settings.tls_key_file),
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
        }
    if not settings.redis_user:
        return login
    login["username"] = settings.redis_user
    if settings.redis_password_file is not None:
        login["password"] = read_password(settings.redis_password_file, "redis_password_file")
    return login


def inbox_prefix(user: str) -> str:
    return f"_INBOX.{user}"


def tls_context(settings: VigilSettings) -> ssl.SSLContext:
    """A client context that checks the server's certificate (against tls_ca_file, else the system's CAs) and its
    host name, and presents the service's client certificate when it has one."""
    for setting in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(settings, setting)
        if path is not None and not path.is_file():
            raise CredentialsError(f"{setting} {str(path)!r} is not a readable file; create it (make secrets) or fix {setting}")
    try:
        context = ssl.create_default_context(cafile=_optional(settings.tls_ca_file))
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        raise CredentialsError(f"cannot load the TLS files (tls_ca_file, tls_cert_file, tls_key_file): {exc}") from None
    return context


def _optional(path: Path | None) -> str | None:
    return None if path is None else str(path)
