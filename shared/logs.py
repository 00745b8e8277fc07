"""One logging setup for every service: `vigil.<service>.<part>` loggers, source and frame ids on records."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from shared.secrets import scrub

_CONTEXT_FIELDS = ("source_id", "frame_id", "model", "subject")


_make_record = logging.getLogRecordFactory()


def _scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record of the process, ours and the libraries', with credentials scrubbed out of its message and its
    traceback before any handler sees it: PyAV, redis-py and nats-py quote the URLs they were given."""
    record = _make_record(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: the handler reports it, as logging does
        return record
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    return record


def scrub_every_record() -> None:
    """Install the scrubbing record factory (once). Done on import, so that a process that runs a service without
    `setup_logging` (the tests, the fleet runner) scrubs too."""
    if logging.getLogRecordFactory() is not _scrubbed_record:
        logging.setLogRecordFactory(_scrubbed_record)


scrub_every_record()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in _CONTEXT_FIELDS if getattr(record, k, None) is not None)
        return f"{base} {ctx}" if ctx else base


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: getattr(record, k) for k in _CONTEXT_FIELDS if getattr(record, k, None) is not None})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(service: str, level: str = "INFO", as_json: bool = False) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = _TextFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py logs every reconnect attempt at ERROR; our callbacks already say it once, clearly.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    quiet_tls_eof()
    return logging.getLogger(f"vigil.{service}")


def _not_tls_eof(record: logging.LogRecord) -> bool:
    return "eof_received() has no effect when using ssl" not in record.getMessage()


def quiet_tls_eof() -> None:
    """Drop asyncio's warning that nats-py's protocol returns True from eof_received() over TLS: asyncio closes
    the connection anyway, which is what a server's close means, and nats-py reconnects as it should. Said at
    every close, it would only teach people to ignore warnings."""
    asyncio_log = logging.getLogger("asyncio")
    if _not_tls_eof not in asyncio_log.filters:
        asyncio_log.addFilter(_not_tls_eof)
