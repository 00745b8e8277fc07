"""Event notices: what the registrator says on the bus when an event starts, changes and ends.

The registrator publishes one `EventNotice` per transition on `vigil.events.<source_id>`; the notifier, which owns
the EVENTS stream, forwards them to webhooks and MQTT. Kept beside shared/subjects.py rather than in it: the
notices are one feature, and their subjects, stream and contract read best together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from pydantic import Field

from shared.contracts import SOURCE_ID_PATTERN, Contract, Event
from shared.settings import VigilSettings
from shared.subjects import _stream_name  # the one rule for stream names under a prefix

NOTIFIER_DURABLE = "notifier"
EVENTS_MAX_AGE = 24 * 3600.0  # a notifier down for longer than a day has missed notices nobody waits for any more


class NoticeType(str, enum.Enum):
    """Frigate's vocabulary (its `frigate/events` topic): the same words, so that its users' automations read ours."""

    NEW = "new"  # the event's first record
    UPDATE = "update"  # its state or frames changed (at most once per notify_update_interval)
    END = "end"  # FINISHED (proofs stored) or ERROR (none yet): the last word on it, once


class EventNotice(Contract):
    """One transition of one event: the record as it is now, and as it was at the previous notice (Frigate's
    before and after). `before` is None for `new`, and after a registrator restart (it is kept in memory)."""

    type: NoticeType
    source_id: str = Field(pattern=SOURCE_ID_PATTERN)
    after: Event
    before: Event | None = None

    def msg_id(self) -> str:
        # A re-publish of the same transition (a retry after a lost ack) is the same notice.
        return f"notice:{self.after.id}:{self.type.value}:{self.after.updated_at:.6f}"


@dataclass(frozen=True)
class NoticeSubjects:
    """The subjects of the notices, under subject_prefix like every other subject (shared/subjects.py)."""

    _prefix: str

    @classmethod
    def from_settings(cls, settings: VigilSettings) -> NoticeSubjects:
        return cls(f"{settings.subject_prefix}." if settings.subject_prefix else "")

    def event(self, source_id: str) -> str:
        return f"{self._prefix}vigil.events.{source_id}"

    @property
    def events_all(self) -> str:
        return f"{self._prefix}vigil.events.*"


def events_stream_name(settings: VigilSettings) -> str:
    return _stream_name(settings, "EVENTS")


def events_stream(settings: VigilSettings) -> StreamConfig:
    """Owned by the notifier: while no notifier runs there is no stream, and the registrator's notices go nowhere
    (services/registrator/notices.py). On disk, so that notices wait out a notifier or NATS restart."""
    return StreamConfig(
        name=events_stream_name(settings),
        subjects=[NoticeSubjects.from_settings(settings).events_all],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE,
        max_msgs=1_000_000,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
    )
