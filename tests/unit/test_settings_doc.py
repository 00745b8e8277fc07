"""docs/configuration.md's settings reference, and the known keys every service checks a settings file
against, are what scripts/settings_doc.py renders from the settings classes."""

from __future__ import annotations

from scripts.settings_doc import DOC, INTERNAL, SERVICES, current, description, render, render_keys, settings_class
from shared.settings_keys import KEYS_FILE


def test_configuration_reference_is_current() -> None:
    assert current() == render(), f"{DOC.name} is out of date: run `make config-docs`"


def test_known_keys_are_current() -> None:
    assert KEYS_FILE.read_text() == render_keys(), f"{KEYS_FILE.name} is out of date: run `make config-docs`"


def test_every_setting_is_described() -> None:
    # .env.example holds only the keys a user changes: the reference is where every other one is explained.
    missing = sorted(
        f"{service}.{name}"
        for service in SERVICES
        for name in settings_class(service).model_fields
        if name not in INTERNAL and not description(settings_class(service), name)
    )
    assert not missing, f"settings without a Field description: {missing}"
