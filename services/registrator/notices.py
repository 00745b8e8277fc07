"""The registrator's event notices: one message on the bus per transition of an event, for the notifier.

Which transition a record is, and whether it is worth a message, is decided here (`NoticeFilter`, no I/O); the
registrator only hands over each record it has written (`Notices.publish`). Without a notifier there is no EVENTS
stream: NATS answers "no responders" at once, and the notice is dropped and counted, costing the registrator nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError

from shared.bus import Bus, Outgoing
from shared.contracts import Event, EventState
from shared.metrics import Metrics
from shared.notices import EventNotice, NoticeSubjects, NoticeType
from shared.retry import backoff_delays

# How long one notice may hold up the registrator while NATS is away; then it is dropped (and counted).
PUBLISH_PATIENCE_SECONDS = 5.0
# Events ended recently: an ERROR record written again by a retry of its proofs is not a second end.
_ENDED_REMEMBERED = 4096
_FINAL = (EventState.FINISHED, EventState.ERROR)


class NoticeFilter:
    """Which notice, if any, a written record makes: `new` for its first record, `end` for its first FINISHED or
    ERROR, `update` for anything else at most once per `update_interval` seconds (per event), and only when its
    state or frames changed. Kept in memory: after a restart, an event still open is announced `new` again."""

    def __init__(self, update_interval: float) -> None:
        self.update_interval = update_interval
        self._last: dict[str, tuple[Event, float]] = {}  # open event id -> (its last notice's record, monotonic time)
        self._ended: OrderedDict[str, None] = OrderedDict()

    def notice(self, event: Event, now: float | None = None) -> EventNotice | None:
        now = time.monotonic() if now is None else now
        last = self._last.get(event.id)
        before = last[0] if last else None
        if event.state in _FINAL:
            self._last.pop(event.id, None)
            if event.id in self._ended:
                # Proofs that came after an ERROR: worth saying (the record now has them), but the end was said.
                kind = NoticeType.UPDATE if event.state is EventState.FINISHED else None
            else:
                self._ended[event.id] = None
                while len(self._ended) > _ENDED_REMEMBERED:
                    self._ended.popitem(last=False)
                kind = NoticeType.END
        elif last is None:
            # Its first record may already say PENDING (two results in one batch), so the state cannot tell.
            kind = NoticeType.NEW
        elif last is not None and (now - last[1] < self.update_interval or _same(before, event)):
            return None
        else:
            kind = NoticeType.UPDATE
        if kind is None:
            return None
        if event.state not in _FINAL:
            self._last[event.id] = (event, now)
        return EventNotice(type=kind, source_id=event.source_id, after=event, before=before)

    @property
    def open(self) -> int:
        return len(self._last)


def _same(before: Event | None, after: Event) -> bool:
    return before is not None and before.state == after.state and before.frames == after.frames


class Notices:
    """Publishes the notices of the records the registrator writes, into the notifier's EVENTS stream."""

    def __init__(self, bus: Bus, update_interval: float, metrics: Metrics) -> None:
        self.bus = bus
        self.filter = NoticeFilter(update_interval)
        self.subjects = NoticeSubjects.from_settings(bus.settings)
        self.log = logging.getLogger("vigil.registrator.notices")
        self.m_published = metrics.counter("notices_published", "event notices published for the notifier", ("type",))
        self.m_unheard = metrics.counter("notices_unheard", "event notices dropped: no EVENTS stream (no notifier)")
        self.m_lost = metrics.counter("notices_lost", "event notices dropped: NATS away for longer than 5 s")

    async def publish(self, event: Event) -> None:
        """Call after the record is written: a notice says what the store already holds."""
        notice = self.filter.notice(event)
        if notice is not None:
            await self._send(notice)

    async def publish_all(self, events: Iterable[Event]) -> None:
        for event in events:
            await self.publish(event)

    async def _send(self, notice: EventNotice) -> None:
        out = Outgoing.of(self.subjects.event(notice.source_id), notice)
        deadline = time.monotonic() + PUBLISH_PATIENCE_SECONDS
        delays = backoff_delays(0.05, 1.0)
        while True:
            try:
                await self.bus.js.publish(out.subject, out.data, timeout=2.0, headers=out.headers)
                self.m_published.labels(type=notice.type.value).inc()
                return
            except (NoStreamResponseError, NoRespondersError):
                # No stream takes the subject (nats-py says "no stream response" for NATS's "no responders"): no
                # notifier is deployed, or JetStream is restarting. Not retried: a fleet without notifications must
                # not pay for them.
                self.m_unheard.inc()
                return
            except (NatsTimeoutError, ConnectionClosedError) as exc:
                if time.monotonic() >= deadline:
                    self.m_lost.inc()
                    self.log.warning("event notice %s of %s dropped: %r", notice.type.value, notice.after.id, exc)
                    return
                await asyncio.sleep(next(delays))
