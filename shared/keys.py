"""Redis key names, declared in one place like the subjects."""

from __future__ import annotations

from shared.settings import VigilSettings

# Fields of the `routed` hash (the router's count for the current run of a source, deleted once summarised)
# and of the `totals` hash (kept: the router adds the same ROUTED_* fields, the registrator the TOTAL_* ones),
# which the api reads.
ROUTED_FRAMES = "frames"
ROUTED_TASKS = "task:"  # + model
ROUTED_SHED = "shed:"  # + model: live frames given no task, its queue being full (router live_backlog_seconds)
TOTAL_INFERRED = "inferred:"  # + model
TOTAL_ERRORS = "errors:"  # + model
TOTAL_EVENTS = "events"
TOTAL_LINE = "line:"  # + <line>:<label>:<in|out>, objects crossing a configured line


class RedisKeys:
    def __init__(self, settings: VigilSettings) -> None:
        # A prefix lets several test runs share one Redis, as subject_prefix does for NATS.
        self._ns = f"vigil:{settings.subject_prefix}:" if settings.subject_prefix else "vigil:"
        self.events = f"{settings.subject_prefix}:events" if settings.subject_prefix else "events"

    @property
    def acl_patterns(self) -> tuple[str, ...]:
        """Every key of this prefix, as Redis ACL key patterns (shared/access.py)."""
        return (f"{self._ns}*", self.events)

    def heartbeat(self, model: str, instance: str) -> str:
        return f"{self._ns}svc:{model}:{instance}"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self._ns}svc:*"

    def routed(self, source_id: str) -> str:
        """Hash of what the router replicas routed for a source: frames, and tasks per model."""
        return f"{self._ns}routed:{source_id}"

    def routed_bits(self, source_id: str) -> str:
        """Prefix of the router's bitmaps of frames counted (`<prefix><block>`), so a redelivered frame counts once."""
        return f"{self._ns}routed-bits:{source_id}"

    def source_health(self, source_id: str) -> str:
        return f"{self._ns}source:{source_id}"

    def source_finished(self, source_id: str) -> str:
        """The file a source has read to its end, so a restarted reader does not replay it."""
        return f"{self._ns}source-finished:{source_id}"

    @property
    def source_health_pattern(self) -> str:
        return f"{self._ns}source:*"

    def totals(self, source_id: str) -> str:
        """Hash of everything counted for a source: routed frames and tasks, inferred, error results, events."""
        return f"{self._ns}totals:{source_id}"

    # The registrator's own memory (services/registrator/state.py): one hash per source, its `SourceSession`.
    def registrator_session(self, source_id: str) -> str:
        """Everything the registrator saves of a source, as fields: its open events, and per run its dedup windows,
        object trackers, routing summary and end."""
        return f"{self._ns}registrator:session:{source_id}"

    @property
    def registrator_session_prefix(self) -> str:
        return f"{self._ns}registrator:session:"

    # The registrator's memory as versions before the per-source session (issue 17) wrote it: global keys over all
    # sources, and per (feed, model) keys. Read once by the upgrade (RegistratorState.upgrade_layout), then deleted.
    @property
    def legacy_registrator_open(self) -> str:
        return f"{self._ns}registrator:open"

    @property
    def legacy_registrator_summaries(self) -> str:
        return f"{self._ns}registrator:summary"

    @property
    def legacy_registrator_ended(self) -> str:
        return f"{self._ns}registrator:ended"

    @property
    def legacy_registrator_ended_at(self) -> str:
        return f"{self._ns}registrator:ended-at"

    @property
    def legacy_registrator_seen_prefix(self) -> str:
        """The seen sets of still older versions (`<prefix><feed>:<model>`, one member per result, never trimmed)."""
        return f"{self._ns}registrator:seen:"

    @property
    def legacy_registrator_tracker_prefix(self) -> str:
        return f"{self._ns}registrator:tracker:"

    @property
    def legacy_registrator_window_prefix(self) -> str:
        return f"{self._ns}registrator:window:"

    # Source leases per role (shared/leases.py): the registrator's are `vigil:registrator:replicas`, `...:lease:<source>`.
    def leases_replicas(self, role: str) -> str:
        """The live replicas of a role, scored by when their heartbeat runs out."""
        return f"{self._ns}{role}:replicas"

    def lease(self, role: str, source_id: str) -> str:
        """Which replica of a role holds a source: `<replica> <fencing token>`, expiring unless renewed."""
        return f"{self._ns}{role}:lease:{source_id}"

    def lease_tokens(self, role: str) -> str:
        """Hash of the last fencing token handed out per source: each new holder gets a higher one."""
        return f"{self._ns}{role}:lease-tokens"

    @property
    def event_index(self) -> str:
        """Hash event id -> current record, so an update can replace the sorted-set member in place."""
        return f"{self._ns}event-index"

    @property
    def events_by_prefix(self) -> str:
        """Prefix of the listing indexes `<prefix><field>:<value>` (shared/event_store.py builds them in Lua too)."""
        return f"{self._ns}events-by:"

    def events_by(self, field: str, value: str) -> str:
        """Sorted set of the ids of the events whose `field` is `value` (shared/event_store.py INDEXED), by start."""
        return f"{self.events_by_prefix}{field}:{value}"

    @property
    def events_stored_bytes(self) -> str:
        """Sum of the events' proof bytes in the filer (their records' stored_bytes): the disk budget's meter."""
        return f"{self._ns}events-stored-bytes"

    @property
    def events_sized(self) -> str:
        """Set once the records stored before stored_bytes existed have been given their proofs' size."""
        return f"{self._ns}events-sized"

    @property
    def events_indexed(self) -> str:
        """The version of the listing indexes built over the records written before they existed (the backfill)."""
        return f"{self._ns}events-indexed"
