"""Settings for code under test, built from given values only: the one place that turns off the .env file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from shared.settings import VigilSettings

S = TypeVar("S", bound=VigilSettings)


def settings_from(cls: type[S], env: Mapping[str, object] | None = None, /, **values: object) -> S:
    """`cls` from `env` and `values` (values win), never from a .env file: a developer's .env must not leak in.

    The process environment still applies, as it does to a service; tests that set a variable rely on that.
    """
    return cls(_env_file=None, **{**(env or {}), **values})  # type: ignore[arg-type]


class MakeSettings(Protocol):
    """The `make_settings` fixture: `make_settings(RouterSettings, route_batch=16)`."""

    def __call__(self, cls: type[S], /, **values: object) -> S: ...
