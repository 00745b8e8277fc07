"""The keys a Vigil settings file or environment may hold, and the check that stops a service on any other.

One .env feeds every service, so a key is known when any service reads it: the union over every service's
settings class, which scripts/settings_doc.py writes to settings_keys.json (make config-docs; a test checks it
is current). It is a file, not an import of every settings class, because each image holds only its own
service's packages.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from dotenv import dotenv_values

KEYS_FILE = Path(__file__).with_name("settings_keys.json")
REFERENCE = "docs/configuration.md"
# Variables of Vigil's own tools, not settings: read by docker compose from .env (and so handed to every
# container), by the image's health check, or by the test suites.
PROJECT_VARIABLES = frozenset(
    {
        "VIGIL_API_BIND",
        "VIGIL_API_PORT",
        "VIGIL_CONTRACT_TOKEN",
        "VIGIL_DEPLOY_DOCKER_ROOT",
        "VIGIL_ENV_FILE",
        "VIGIL_HEALTHZ_PORT_SETTINGS",
        "VIGIL_HOST_A",
        "VIGIL_HOST_B",
        "VIGIL_HOST_C",
        "VIGIL_HUB_IP",
        "VIGIL_NATS_IMAGE",
        "VIGIL_PIP_CA",
        "VIGIL_PIP_CONF",
        "VIGIL_PYTHON_IMAGE",
        "VIGIL_READER_RESTART",
        "VIGIL_REDIS_IMAGE",
        "VIGIL_SEAWEEDFS_IMAGE",
        "VIGIL_SECRETS_DIR",
    }
)
# docker compose reads its own variables from .env too (COMPOSE_FILE, COMPOSE_PROFILES, ...).
DOCKER_PREFIXES = ("COMPOSE_", "DOCKER_")
PROJECT_PREFIX = "VIGIL_"


@cache
def role_settings() -> dict[str, frozenset[str]]:
    """Service (or role) name -> the settings its class reads, lower-cased: `<name>_<setting>` is its own key."""
    doc: dict[str, list[str]] = json.loads(KEYS_FILE.read_text())
    return {role: frozenset(key.lower() for key in keys) for role, keys in doc.items()}


@cache
def _vocabulary() -> tuple[frozenset[str], list[str], list[str]]:
    """Lower-cased: the known settings; every name a setting may take (shared or a service's own); Vigil's variables."""
    roles = role_settings()
    settings = frozenset().union(*roles.values())
    names = sorted(settings | {f"{role}_{key}" for role, keys in roles.items() for key in keys})
    return settings, names, sorted(v.lower() for v in PROJECT_VARIABLES)


def _known(key: str) -> bool:
    settings, _, _ = _vocabulary()
    lower = key.lower()
    if lower in settings or key.upper() in PROJECT_VARIABLES or key.upper().startswith(DOCKER_PREFIXES):
        return True
    role, _, rest = lower.partition("_")
    return rest in role_settings().get(role, frozenset())


def _owned(name: str) -> bool:
    """An environment variable in Vigil's namespaces: VIGIL_*, or a service's own `<name>_*`."""
    upper = name.upper()
    return upper.startswith(PROJECT_PREFIX) or any(upper.startswith(f"{role.upper()}_") for role in role_settings())


def suggestion(key: str) -> str:
    """' (did you mean <closest>?)', in the key's own case, or a pointer to the reference when none is close."""
    settings, names, variables = _vocabulary()
    lower = key.lower()
    role, _, rest = lower.partition("_")
    if role in role_settings() and rest in settings:
        readers = ", ".join(sorted(r for r, keys in role_settings().items() if rest in keys))
        return f" ({role} has no setting {rest}; it is read by {readers})"
    if lower.startswith(PROJECT_PREFIX.lower()):
        # VIGIL_ names Vigil's tools; settings go by their own names (VIGIL_API_PORT is not api_port).
        bare = lower.removeprefix(PROJECT_PREFIX.lower())
        close = difflib.get_close_matches(bare, names, n=1)
        if close and bare[:3] == close[0][:3]:
            match = close[0].upper() if key.isupper() else close[0]
            return f" (settings take no {PROJECT_PREFIX} prefix: did you mean {match}?)"
        close = difflib.get_close_matches(lower, variables, n=1)
        return f" (did you mean {close[0].upper()}?)" if close else f" (Vigil's own variables: {REFERENCE}#docker-compose)"
    close = difflib.get_close_matches(lower, names + variables, n=1)
    if not close:
        return f" (no setting is close: every setting is in {REFERENCE})"
    match = close[0]
    return f" (did you mean {match.upper() if key.isupper() or match.upper() in PROJECT_VARIABLES else match}?)"


def check_keys(env_file: Path | None, environ: Mapping[str, str]) -> list[str]:
    """One line per unknown key of the settings file, and per unknown variable in Vigil's namespaces."""
    problems: list[str] = []
    if env_file is not None:
        for key in dotenv_values(env_file):
            if not _known(key):
                problems.append(f"unknown setting {key} in {env_file}{suggestion(key)}")
    for name in sorted(environ):
        if _owned(name) and not _known(name):
            problems.append(f"unknown setting {name} in the environment{suggestion(name)}")
    if problems:
        problems.append(
            f"Fix or remove them: one .env feeds every service, so every service stops on them. Every setting is in "
            f"{REFERENCE}; a service's own value is <service>_<setting>, e.g. DETECTION_BATCH_SIZE."
        )
    return problems
