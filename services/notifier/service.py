"""Notifier: event notices from the EVENTS stream to webhooks and an MQTT broker.

Replicas share one durable consumer. A notice is acked only once every destination that wants it has taken it
or given up on it (its retries spent: dead-lettered and counted), so a notifier killed at any point loses none:
what it held is delivered again by the next (at least once: a receiver may see a notice twice, with the same
`after.updated_at`). Notices of one event go out in order; those of different events side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from nats.aio.msg import Msg

from services.notifier.senders import DeliveryError, MqttSender, Sender, WebhookSender
from services.notifier.settings import NotifierSettings
from shared.bus import fetch
from shared.credentials import read_password, tls_context
from shared.lifecycle import Service, StartupError, Stopping
from shared.notices import NOTIFIER_DURABLE, EventNotice, events_stream, events_stream_name
from shared.retry import backoff_delays


class NotifierService(Service[NotifierSettings]):
    name = "notifier"

    def __init__(self, settings: NotifierSettings) -> None:
        super().__init__(settings)
        self.senders: list[Sender] = []
        self.mqtt: MqttSender | None = None
        self.delivered_total = 0
        self.m_delivered = self.metrics.counter("notices_delivered", "notices a destination accepted", ("destination", "type"))
        self.m_retries = self.metrics.counter("delivery_retries", "deliveries tried again after a failure", ("destination",))
        self.m_given_up = self.metrics.counter(
            "notices_given_up", "notices a destination never took: retries spent or refused, dead-lettered", ("destination",)
        )
        self.m_seconds = self.metrics.histogram("delivery", "time to deliver one notice, retries included", ("destination",))

    async def start(self, stack: AsyncExitStack) -> None:
        s = self.settings
        if not s.destinations:
            raise StartupError("the notifier has no destination: set webhooks (and webhook_secret_file) or mqtt_host")
        if s.webhooks:
            assert s.webhook_secret_file is not None  # the settings refuse webhooks without it
            secret = read_password(s.webhook_secret_file, "webhook_secret_file", "the webhooks' signing key").encode()
            connector = aiohttp.TCPConnector(ssl=tls_context(s), limit=32)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            self.senders += [WebhookSender(i, hook, session, secret, s.webhook_timeout) for i, hook in enumerate(s.webhooks)]
        if s.mqtt_host:
            self.mqtt = MqttSender(s, f"vigil-notifier-{self.instance}", self.stop_event)
            self.senders.append(self.mqtt)
        await self.open_bus(stack)
        await self.bus.ensure_stream(events_stream(s))

    def health(self) -> dict[str, Any]:
        doc = super().health() | {"destinations": [sender.name for sender in self.senders], "delivered": self.delivered_total}
        if self.mqtt is not None:
            doc["mqtt_connected"] = self.mqtt.connected
        return doc

    async def run(self) -> None:
        s = self.settings
        sub = await self.bus.durable_pull(
            events_stream_name(s), NOTIFIER_DURABLE, ack_wait=s.notify_ack_wait, max_ack_pending=4 * s.notify_batch
        )
        async with asyncio.TaskGroup() as tg:
            mqtt = tg.create_task(self.mqtt.keep_connected()) if self.mqtt is not None else None
            while not self.stop_event.is_set():
                msgs = await fetch(sub, s.notify_batch, timeout=0.5)
                if msgs:
                    await self._deliver_batch(msgs)
            if mqtt is not None:
                mqtt.cancel()

    async def _deliver_batch(self, msgs: list[Msg]) -> None:
        """The batch by event, in order within each: one event's notices wait for each other, the others do not."""
        lanes: dict[str, list[tuple[Msg, EventNotice]]] = {}
        for msg in msgs:
            notice = await self.bus.decode(msg, EventNotice)
            if notice is None:
                await msg.ack()  # dead-lettered by decode: no destination could read it either
                continue
            lanes.setdefault(notice.after.id, []).append((msg, notice))
        keeper = asyncio.create_task(self._keep_alive(msgs))
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in lanes.values():
                    tg.create_task(self._deliver_lane(lane))
        finally:
            keeper.cancel()

    async def _deliver_lane(self, lane: list[tuple[Msg, EventNotice]]) -> None:
        for msg, notice in lane:
            if not await self._deliver_all(msg, notice):
                return  # unacked: the next notifier delivers it, and the rest of its event after it
            await msg.ack()

    async def _deliver_all(self, msg: Msg, notice: EventNotice) -> bool:
        """To every destination that wants it, side by side; False when the service stopped first."""
        stopped = False
        try:
            async with asyncio.TaskGroup() as tg:
                for sender in self.senders:
                    if sender.rule.wants(notice):
                        tg.create_task(self._deliver(sender, msg, notice))
        except* Stopping:
            stopped = True
        return not stopped

    async def _deliver(self, sender: Sender, msg: Msg, notice: EventNotice) -> None:
        """Until the destination takes it, or gives up: then it is dead-lettered, and the notice counts as done here."""
        s = self.settings
        started = time.perf_counter()
        delays = backoff_delays(s.notify_retry_initial, s.notify_retry_max)
        attempt = 0
        while True:
            try:
                await sender.send(msg.data)
                break
            except DeliveryError as exc:
                if exc.final or attempt >= s.notify_retries:
                    reason = f"{sender.name} gave up on {notice.type.value} of event {notice.after.id}: {exc}"
                    if not exc.final:
                        reason += f" (after {attempt + 1} attempts)"
                    self.m_given_up.labels(destination=sender.name).inc()
                    await self.bus.dead_letter(msg.subject, msg.data, reason)
                    return
                if attempt == 0:
                    extra = {"source_id": notice.source_id}
                    self.log.info("%s did not take a notice, retrying: %s", sender.name, exc, extra=extra)
            attempt += 1
            self.m_retries.labels(destination=sender.name).inc()
            if await self.pause(next(delays)):
                raise Stopping(f"delivery to {sender.name}")
        self.delivered_total += 1
        self.m_delivered.labels(destination=sender.name, type=notice.type.value).inc()
        self.m_seconds.labels(destination=sender.name).observe(time.perf_counter() - started)

    async def _keep_alive(self, msgs: list[Msg]) -> None:
        """In-progress acks while retries hold the batch: not redelivered to another replica meanwhile."""
        while True:
            await asyncio.sleep(self.settings.notify_ack_wait / 3)
            for msg in msgs:
                with contextlib.suppress(Exception):  # acked already, or NATS away: redelivery is the fallback
                    await msg.in_progress()
