"""Retention: events older than the configured age go, with their clips and key frames (both copies)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

from services.registrator.proofs import proof_paths, remote_folder
from shared.contracts import Event
from shared.event_store import EventStore
from shared.storage import SeaweedStorage, StorageError

log = logging.getLogger("vigil.registrator.retention")


def event_folder(tmp_path: Path, event_id: str) -> Path | None:
    """TMP_PATH/<event_id>, resolved, or None unless it lies strictly inside TMP_PATH: an id such as `..` or
    `a/../..` (or a link planted there) must never turn a clean-up into an rmtree of something else."""
    root = tmp_path.resolve()
    folder = (root / event_id).resolve()
    return folder if folder != root and folder.is_relative_to(root) else None


async def sweep(store: EventStore, storage: SeaweedStorage, tmp_path: Path, max_age_seconds: float) -> int:
    """Remove every event that started more than `max_age_seconds` ago; returns how many went."""
    removed = 0
    while events := await store.started_before(time.time() - max_age_seconds):
        for member, event in events:
            if event is None:
                # Its id is not a safe name (or it is no record at all): the record goes, no file is looked for.
                event_id = _raw_id(member)
                log.warning("retention removed an unreadable event record (id %r); its proof files, if any, stay", event_id)
            elif await _remove_proofs(storage, tmp_path, event):
                event_id = event.id
            else:
                return removed  # storage away: the next sweep tries again, the record stays meanwhile
            await store.delete(member, event_id)
            removed += 1
    if removed:
        log.info("retention removed %d event(s) older than %.1f days", removed, max_age_seconds / 86400)
    return removed


async def _remove_proofs(storage: SeaweedStorage, tmp_path: Path, event: Event) -> bool:
    for local in proof_paths(tmp_path, event.id):
        try:
            await storage.delete(f"{storage.filer_url}/{remote_folder(event.id)}/{local.name}")
        except StorageError as exc:
            log.warning("could not delete %s of event %s: %s", local.name, event.id, exc)
            return False
    folder = event_folder(tmp_path, event.id)
    if folder is not None and folder.is_dir():
        await asyncio.to_thread(shutil.rmtree, folder, True)
    return True


def _raw_id(member: bytes) -> str:
    try:
        doc = json.loads(member)
        return str(doc.get("id", "")) if isinstance(doc, dict) else ""
    except ValueError:
        return ""
