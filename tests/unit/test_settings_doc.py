"""docs/configuration.md's settings reference is what scripts/settings_doc.py renders from the settings classes."""

from __future__ import annotations

from scripts.settings_doc import DOC, current, render


def test_configuration_reference_is_current() -> None:
    assert current() == render(), f"{DOC.name} is out of date: run `make config-docs`"
