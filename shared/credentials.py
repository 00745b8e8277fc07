"""The credentials of a service's role, read from files when it connects (Compose mounts them as secrets).

Only the file's path is a setting: the password (or SeaweedFS signing key) itself is never a settings value, so
it is never logged, printed by `--check-config` or shown in an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from shared.retry import InfrastructureUnavailable
from shared.settings import VigilSettings


class NatsLogin(TypedDict, total=False):
    user: str
    password: str
    inbox_prefix: str


class RedisLogin(TypedDict, total=False):
    username: str
    password: str


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
    if not settings.nats_user:
        return {}
    login: NatsLogin = {"user": settings.nats_user, "inbox_prefix": inbox_prefix(settings.nats_user)}
    if settings.nats_password_file is not None:
        login["password"] = read_password(settings.nats_password_file, "nats_password_file")
    return login


def redis_login(settings: VigilSettings) -> RedisLogin:
    """Keyword arguments of `redis.asyncio.Redis` for the service's ACL user; none without one."""
    if not settings.redis_user:
        return {}
    login: RedisLogin = {"username": settings.redis_user}
    if settings.redis_password_file is not None:
        login["password"] = read_password(settings.redis_password_file, "redis_password_file")
    return login


def inbox_prefix(user: str) -> str:
    return f"_INBOX.{user}"
