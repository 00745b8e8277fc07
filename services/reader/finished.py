"""Files that are done for good are not read again when the reader starts again.

A file read to its end (ENDED) or to an error it cannot get past (FAILED: truncated, corrupt, missing) is
recorded in Redis with the file's identity. A reader that starts again on the same source and the same
file, unchanged, skips it: a restart policy (compose's `on-failure`, a supervisor) or a host reboot would
otherwise replay it, publishing every frame and event a second time. A new file, a changed one or another
`source_id` runs as usual; so does a file whose reader was stopped before the end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import Field
from redis.asyncio import Redis

from services.reader.settings import SourceConfig
from shared.contracts import Contract, Scrubbed, SourceState
from shared.keys import RedisKeys
from shared.secrets import scrub

# Long enough for any restart loop or reboot; bounded, so a source id long gone leaves no key behind.
_KEEP_SECONDS = 90 * 24 * 3600
log = logging.getLogger("vigil.reader.finished")


class FinishedFile(Contract):
    """The record of a file source that is done for good."""

    source_id: str
    file: str = Field(description="the file's identity: path, size and modification time, or the URL")
    state: SourceState
    error: Scrubbed | None = None
    at: float


def file_identity(config: SourceConfig) -> str:
    """What makes a file the same file: a local one's resolved path, size and mtime; a URL (credentials removed)."""
    path = Path(config.url)
    try:
        stat = path.stat()
    except OSError:
        return f"{path.resolve() if not _is_url(config.url) else scrub(config.url)}|absent"
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _is_url(url: str) -> bool:
    return "://" in url


class FinishedFiles:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    async def previous(self, config: SourceConfig) -> FinishedFile | None:
        raw = await self.redis.get(self.keys.source_finished(config.source_id))
        if raw is None:
            return None
        try:
            record = FinishedFile.model_validate_json(raw)
        except ValueError:
            log.warning("unreadable record of a finished file ignored", extra={"source_id": config.source_id})
            return None
        return record if record.file == file_identity(config) else None

    async def record(self, config: SourceConfig, state: SourceState, error: str | None) -> None:
        record = FinishedFile(source_id=config.source_id, file=file_identity(config), state=state, error=error, at=time.time())
        await self.redis.set(self.keys.source_finished(config.source_id), record.to_bytes(), ex=_KEEP_SECONDS)
