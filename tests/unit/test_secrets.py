"""The scrubber: no password of any URL survives it, whatever the password holds; nothing else changes."""

from __future__ import annotations

import logging

import pytest

from shared.contracts import SourceHealth, SourceState, SourceStatus
from shared.secrets import scrub

# A password with every character that broke the old redact(): a raw @, a colon and a percent-encoded @.
PASSWORD = "S3cr@t:pa%40ss"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        (f"rtsp://admin:{PASSWORD}@10.0.0.9:554/h264", "rtsp://***@10.0.0.9:554/h264"),
        (
            f"[Errno 111] Connection refused: 'rtsp://admin:{PASSWORD}@127.0.0.1:9/x'",
            "[Errno 111] Connection refused: 'rtsp://***@127.0.0.1:9/x'",
        ),
        (f"redis://:{PASSWORD}@db:6379/0 then nats://u:p@hub:4222", "redis://***@db:6379/0 then nats://***@hub:4222"),
        ("RTSPS://user@cam", "RTSPS://***@cam"),
        (f"<rtsp://a:{PASSWORD}@[::1]:554/s>", "<rtsp://***@[::1]:554/s>"),
        # No userinfo: left alone, an @ in a path or query included.
        ("video/vtest.mp4", "video/vtest.mp4"),
        ("http://host/p?mail=a@b.c", "http://host/p?mail=a@b.c"),
        ("ops@example.com said hi", "ops@example.com said hi"),
    ],
)
def test_scrub_removes_every_userinfo_and_nothing_else(text: str, clean: str) -> None:
    assert scrub(text) == clean


def test_contracts_scrub_errors_and_urls_whoever_built_them() -> None:
    url = f"rtsp://admin:{PASSWORD}@cam:554/x"
    health = SourceHealth(
        source_id="cam",
        state=SourceState.RECONNECTING,
        url=url,
        live=True,
        fps=0,
        frames_read=0,
        frames_published=0,
        frames_dropped={},
        reconnects=1,
        last_error=f"cannot open {url}: refused",
        state_since=0,
        updated_at=0,
        instance="i",
    )
    status = SourceStatus.from_bytes(
        b'{"source_id": "cam", "state": "failed", "wall_time": 0, "error": "' + url.encode() + b' refused"}'
    )
    for text in (health.to_bytes().decode(), status.to_bytes().decode()):
        assert "S3cr" not in text and "pa%40ss" not in text and "rtsp://***@cam:554/x" in text


def test_every_log_record_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    import shared.logs  # noqa: F401 - installs the scrubbing record factory

    log = logging.getLogger("vigil.test.secrets")
    with caplog.at_level(logging.INFO):
        log.info("opening %s", f"rtsp://admin:{PASSWORD}@cam/x")
        try:
            raise ConnectionError(f"refused: 'rtsp://admin:{PASSWORD}@cam/x'")
        except ConnectionError:
            log.exception("it broke")
    assert "opening rtsp://***@cam/x" in caplog.text and "refused: 'rtsp://***@cam/x'" in caplog.text
    assert "S3cr" not in caplog.text and "pa%40ss" not in caplog.text
