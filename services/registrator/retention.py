"""Retention: events older than the configured age go, with their clips and key frames (both copies)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from services.registrator.proofs import proof_paths, remote_folder
from shared.event_store import EventStore
from shared.storage import SeaweedStorage, StorageError

log = logging.getLogger("vigil.registrator.retention")


async def sweep(store: EventStore, storage: SeaweedStorage, tmp_path: Path, max_age_seconds: float) -> int:
    """Remove every event that started more than `max_age_seconds` ago; returns how many went."""
    removed = 0
    while events := await store.started_before(time.time() - max_age_seconds):
        for member, event in events:
            for local in proof_paths(tmp_path, event.id):
                try:
                    await storage.delete(f"{storage.filer_url}/{remote_folder(event.id)}/{local.name}")
                except StorageError as exc:
                    log.warning("could not delete %s of event %s: %s", local.name, event.id, exc)
                    return removed  # storage away: the next sweep tries again, the record stays meanwhile
            folder = tmp_path / event.id
            # Only ever a folder named by an event id, directly under TMP_PATH.
            if folder.parent == tmp_path and folder.is_dir():
                await asyncio.to_thread(shutil.rmtree, folder, True)
            await store.delete(member, event.id)
            removed += 1
    if removed:
        log.info("retention removed %d event(s) older than %.1f days", removed, max_age_seconds / 86400)
    return removed
