"""The FRAMES and RESULTS caps come from the settings (docs/operations.md#sizing-streams-redis-and-disk)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import VigilSettings
from shared.subjects import frames_stream, results_stream


def test_stream_caps_are_settings() -> None:
    s = VigilSettings.model_validate(
        {"frames_stream_max_msgs": 60_000, "results_stream_max_msgs": 8_600_000, "results_stream_max_age": 4 * 3600}
    )
    assert frames_stream(s).max_msgs == 60_000
    results = results_stream(s)
    assert (results.max_msgs, results.max_age) == (8_600_000, 4 * 3600)
    default = VigilSettings.model_validate({})
    assert (frames_stream(default).max_msgs, results_stream(default).max_msgs) == (500_000, 2_000_000)


def test_a_cap_too_small_to_hold_a_burst_is_refused() -> None:
    with pytest.raises(ValidationError, match="results_stream_max_msgs"):
        VigilSettings.model_validate({"results_stream_max_msgs": 100})
