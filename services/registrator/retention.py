"""Retention: events go, with their clips and key frames (both copies), oldest first, when they are older than
the configured age or when their proofs take more than the disk budget (by the records' stored_bytes: no filer
scan)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.registrator.lifecycle import Lifecycle
from services.registrator.proofs import proof_paths, remote_folder
from services.registrator.settings import RegistratorSettings
from shared.contracts import Event
from shared.event_store import EventStore
from shared.metrics import Metrics
from shared.storage import FileGone, SeaweedStorage, StorageError

log = logging.getLogger("vigil.registrator.retention")


@dataclass
class Removed:
    """What one sweep removed: events and the proof bytes their records counted."""

    events: int = 0
    bytes: int = 0


def event_folder(tmp_path: Path, event_id: str) -> Path | None:
    """TMP_PATH/<event_id>, resolved, or None unless it lies strictly inside TMP_PATH: an id such as `..` or
    `a/../..` (or a link planted there) must never turn a clean-up into an rmtree of something else."""
    root = tmp_path.resolve()
    folder = (root / event_id).resolve()
    return folder if folder != root and folder.is_relative_to(root) else None


@dataclass(frozen=True)
class RetentionMetrics:
    removed: Counter
    removed_bytes: Counter
    stored: Gauge

    @classmethod
    def register(cls, metrics: Metrics) -> RetentionMetrics:
        return cls(
            removed=metrics.counter("retention_removed", "events removed with their files", ("reason",)),
            removed_bytes=metrics.counter("retention_removed_bytes", "proof bytes removed", ("reason",)),
            stored=metrics.gauge("events_stored_bytes", "bytes of the events' proofs in the filer, by their records"),
        )


class Retention:
    """The sweeps, every `retention_interval`, for as long as the service runs: by age, then by disk budget."""

    def __init__(
        self,
        life: Lifecycle,
        settings: RegistratorSettings,
        store: EventStore,
        storage: SeaweedStorage,
        metrics: RetentionMetrics,
    ) -> None:
        self.life = life
        self.settings = settings
        self.store = store
        self.storage = storage
        self.metrics = metrics

    @staticmethod
    def wanted(settings: RegistratorSettings) -> bool:
        return settings.event_retention_days > 0 or settings.event_storage_max_gb > 0

    async def run(self) -> None:
        store, storage = self.store, self.storage
        s, tmp = self.settings, Path(self.settings.TMP_PATH)
        sized = s.event_storage_max_gb == 0  # without a budget, the size of older events matters to nothing
        while not self.life.stop_event.is_set():
            try:
                if not sized:
                    await size_unsized(store, storage)
                    sized = True
                if s.event_retention_days > 0:
                    self._count("age", await sweep(store, storage, tmp, s.event_retention_days * 86400))
                if s.event_storage_max_gb > 0:
                    self._count("budget", await sweep_budget(store, storage, tmp, int(s.event_storage_max_gb * 1e9)))
                self.metrics.stored.set(await store.stored_bytes())
            except Exception as exc:  # noqa: BLE001 - Redis or storage away: the next sweep tries again
                self.life.log.warning("retention sweep failed: %r", exc)
            await self.life.pause(s.retention_interval)

    def _count(self, reason: str, removed: Removed) -> None:
        self.metrics.removed.labels(reason=reason).inc(removed.events)
        self.metrics.removed_bytes.labels(reason=reason).inc(removed.bytes)


async def sweep(store: EventStore, storage: SeaweedStorage, tmp_path: Path, max_age_seconds: float) -> Removed:
    """Remove every event that started more than `max_age_seconds` ago."""
    removed = Removed()
    while events := await store.started_before(time.time() - max_age_seconds):
        for member, event in events:
            if not await _remove(store, storage, tmp_path, member, event, removed):
                return removed  # storage away: the next sweep tries again, the record stays meanwhile
    if removed.events:
        log.info(
            "retention removed %d event(s) older than %.1f days (%.1f MB of proofs)",
            removed.events,
            max_age_seconds / 86400,
            removed.bytes / 1e6,
        )
    return removed


async def sweep_budget(store: EventStore, storage: SeaweedStorage, tmp_path: Path, max_bytes: int) -> Removed:
    """Remove the oldest events until their proofs take at most `max_bytes` in the filer."""
    removed = Removed()
    stored = await store.stored_bytes()
    while stored > max_bytes:
        oldest = await store.oldest()
        if not oldest:
            log.warning("the proof meter says %d bytes but no event is left: it is reset", stored)
            await store.redis.set(store.keys.events_stored_bytes, 0)
            break
        for member, event in oldest:
            if not await _remove(store, storage, tmp_path, member, event, removed):
                return removed
            stored = await store.stored_bytes()
            if stored <= max_bytes:
                break
    if removed.events:
        log.info(
            "retention removed the %d oldest event(s) (%.1f MB of proofs): %.1f MB stored, budget %.1f MB",
            removed.events,
            removed.bytes / 1e6,
            stored / 1e6,
            max_bytes / 1e6,
        )
    return removed


async def size_unsized(store: EventStore, storage: SeaweedStorage) -> tuple[int, int] | None:
    """Give the events stored before records carried `stored_bytes` their proofs' size (a HEAD request per file),
    so that the disk budget counts them: once (a mark says it is done). Returns (events sized, bytes), or None
    when done before. A storage error stops it; the next start tries again, and sizes only what is left."""
    if await store.redis.exists(store.keys.events_sized):
        return None
    sized, total = 0, 0
    async with aclosing(store.each()) as records:
        async for event in records:
            urls = [u for u in (event.video_proofs, event.image_proofs, event.image_annotated_proofs) if u]
            if event.stored_bytes or not urls:
                continue
            size = 0
            for url in urls:
                try:
                    size += await storage.size(url)
                except FileGone:
                    continue  # removed by hand, or by a TTL: it takes nothing
            await store.save(event.model_copy(update={"stored_bytes": size}))
            sized, total = sized + 1, total + size
    await store.redis.set(store.keys.events_sized, "1")
    if sized:
        log.info("retention sized %d event(s) stored before their size was recorded: %.1f MB", sized, total / 1e6)
    return sized, total


async def _remove(
    store: EventStore, storage: SeaweedStorage, tmp_path: Path, member: bytes, event: Event | None, removed: Removed
) -> bool:
    """One record and its files; False when storage is away (the record stays)."""
    if event is None:
        # Its id is not a safe name (or it is no record at all): the record goes, no file is looked for.
        event_id = _raw_id(member)
        log.warning("retention removed an unreadable event record (id %r); its proof files, if any, stay", event_id)
    elif await _remove_proofs(storage, tmp_path, event):
        event_id = event.id
    else:
        return False
    removed.bytes += await store.delete(member, event_id)
    removed.events += 1
    return True


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
