"""NATS and JetStream for every service: reconnect forever, typed publish/consume, dead letters."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from shared.contracts import Contract, ContractError
from shared.credentials import nats_login
from shared.metrics import Metrics
from shared.pause import sleep_unless_stopped
from shared.retry import InfrastructureUnavailable, backoff_delays
from shared.settings import VigilSettings
from shared.subjects import Subjects

C = TypeVar("C", bound=Contract)

_STREAM_NAME_IN_USE = 10058
# What NATS answers a stream with more replicas than it has nodes: a single server, then a cluster too small.
_REPLICAS_NOT_CLUSTERED = 10074
_NO_PEERS_FOR_PLACEMENT = 10005
# Deliveries of a frame or result before JetStream gives it up (tasks have their own, task_max_deliver).
MAX_DELIVER = 5


class Bus:
    """One NATS connection per service, with the counters that make its health visible."""

    def __init__(self, settings: VigilSettings, service: str, instance: str, metrics: Metrics) -> None:
        self.settings = settings
        self.service = service
        self.instance = instance
        self.subjects = Subjects.from_settings(settings)
        self.log = logging.getLogger(f"vigil.{service}.bus")
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connected_once = False
        self._closing = False
        self.disconnects = metrics.counter("nats_disconnects", "NATS disconnections")
        self.reconnects = metrics.counter("nats_reconnects", "NATS reconnections")
        self.dead_letters = metrics.counter("dead_letters", "invalid messages sent to the dead-letter subject", ("subject",))
        self.publish_retries = metrics.counter("publish_retries", "JetStream publishes retried", ("subject",))
        self.max_deliveries = metrics.counter(
            "max_deliveries", "messages JetStream gave up on after their last delivery (advisories)", ("stream", "consumer")
        )

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "Bus.connect() first"
        return self._js

    async def connect(self) -> None:
        last_error: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            if self._connected_once:
                self.log.warning("NATS error: %r", exc)
            else:
                last_error[:] = [exc]

        async def on_disconnect() -> None:
            if self._closing:
                return
            self.disconnects.inc()
            self.log.warning("disconnected from NATS; reconnecting")

        async def on_reconnect() -> None:
            self.reconnects.inc()
            self.log.info("reconnected to NATS")

        self._closing = False
        self.log.info("connecting to NATS")
        try:
            # max_reconnect_attempts=-1 makes nats-py retry the first connect forever too;
            # the startup timeout turns that into one clear error instead of a silent hang.
            self.nc = await asyncio.wait_for(
                nats.connect(
                    servers=self.settings.nats_servers,
                    name=f"{self.service}-{self.instance}",
                    **nats_login(self.settings),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1.0,
                    connect_timeout=2.0,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                timeout=self.settings.startup_timeout,
            )
        except TimeoutError:
            if last_error and isinstance(last_error[0], AuthorizationError):
                raise InfrastructureUnavailable(
                    f"NATS refused user {self.settings.nats_user or '(none)'!r}: {last_error[0]}; "
                    "check nats_user and nats_password_file"
                ) from None
            raise InfrastructureUnavailable(
                f"NATS unreachable after {self.settings.startup_timeout:.0f} s (nats_host is set; is nats-server running?)"
            ) from None
        self._connected_once = True
        self._js = self.nc.jetstream(timeout=5.0)

    async def close(self) -> None:
        if self.nc is None or self.nc.is_closed:
            return
        self._closing = True
        # Flush, not drain: our consumers are pull subscriptions whose loops have already ended,
        # so there is nothing pending to drain, and nats-py's drain of an idle pull subscription
        # waits out its whole timeout. Unacked JetStream messages are redelivered anyway.
        try:
            await asyncio.wait_for(self.nc.flush(), timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - shutdown must go on
            self.log.warning("NATS flush at shutdown failed: %r", exc)
        await self.nc.close()

    async def ensure_stream(self, config: StreamConfig) -> None:
        """Create or update a stream this service owns; safe to run from every replica."""
        try:
            await self._add_or_update_stream(config)
        except APIError as exc:
            if exc.err_code not in (_REPLICAS_NOT_CLUSTERED, _NO_PEERS_FOR_PLACEMENT) or (config.num_replicas or 1) == 1:
                raise
            raise InfrastructureUnavailable(
                f"NATS cannot keep stream {config.name} on {config.num_replicas} nodes ({exc.description}): set "
                "stream_replicas to at most the NATS cluster's nodes (1 for a single server), or add nodes"
            ) from None

    async def _add_or_update_stream(self, config: StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            try:
                await self.js.update_stream(config)
            except BadRequestError:
                # A work queue made by an older version with another storage type cannot be updated in
                # place; its tasks are short-lived, so it is made again.
                assert config.name is not None  # add_stream refuses a stream without one
                old = (await self.js.stream_info(config.name)).config
                if config.retention is not RetentionPolicy.WORK_QUEUE or old.storage == config.storage:
                    raise
                self.log.warning("re-creating work queue %s with %s storage", config.name, config.storage)
                await self.js.delete_stream(config.name)
                await self.js.add_stream(config)

    async def publish(self, subject: str, message: Contract, *, timeout: float | None = None) -> None:
        """JetStream publish of a contract, with its message id; see `publish_out`."""
        await self.publish_out(Outgoing.of(subject, message), timeout=timeout)

    async def publish_out(self, out: Outgoing, *, timeout: float | None = None) -> None:
        """JetStream publish, retried while the stream is missing or NATS is away, until `timeout`.

        Contracts are validated when built and frozen after, so what is serialised is valid. The message id
        makes every retry safe: a publish whose ack was lost and is sent again is stored once."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.settings.startup_timeout)
        delays = backoff_delays(0.05, 2.0)
        while True:
            try:
                await self.js.publish(out.subject, out.data, timeout=2.0, headers=out.headers)
                return
            except (NoRespondersError, NoStreamResponseError, NatsTimeoutError, nats.errors.ConnectionClosedError) as exc:
                if time.monotonic() >= deadline:
                    raise InfrastructureUnavailable(f"could not publish on {out.subject}: {exc!r}") from exc
                self.publish_retries.labels(subject=out.subject).inc()
                await asyncio.sleep(next(delays))

    async def publish_many(self, items: list[Outgoing], *, timeout: float = 5.0) -> list[BaseException | None]:
        """JetStream publishes sent back to back, their acks awaited together: one round trip for a batch.

        Returns, per item, None when the stream stored it, else the error. Failed items fall back to
        `publish_out`, which retries until `timeout`: a blip of NATS costs time, not tasks, and an item
        whose first ack was only slow is dropped by the stream as a copy (same message id), not stored twice.
        """
        futures = [await self.js.publish_async(out.subject, out.data, headers=out.headers) for out in items]
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        outcomes: list[BaseException | None] = []
        for out, future in zip(items, futures, strict=True):
            if future.done() and not future.cancelled() and future.exception() is None:
                outcomes.append(None)
                continue
            if not future.done():
                future.cancel()
            try:
                await self.publish_out(out, timeout=timeout)
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, per item
                outcomes.append(exc)
        return outcomes

    async def publish_core(self, subject: str, message: Contract) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, message.to_bytes())

    async def decode(self, msg: Msg, cls: type[C]) -> C | None:
        """The contract in `msg`, or None after dead-lettering it: a bad message never stops a service."""
        try:
            return cls.from_bytes(msg.data)
        except ContractError as exc:
            await self.dead_letter(msg.subject, msg.data, str(exc))
            return None

    async def dead_letter(self, subject: str, data: bytes, reason: str) -> None:
        self.dead_letters.labels(subject=subject).inc()
        self.log.warning("dead-lettered a message: %s", reason[:300], extra={"subject": subject})
        assert self.nc is not None
        headers = {"Vigil-Reason": reason[:1000], "Vigil-Subject": subject}
        try:
            await self.nc.publish(self.subjects.dead_letter(self.service), data[:65536], headers=headers)
        except Exception as exc:  # noqa: BLE001 - the counter above already recorded it
            self.log.warning("could not publish a dead letter: %r", exc)

    async def durable_pull(
        self,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        filter_subjects: list[str] | None = None,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        max_deliver: int = MAX_DELIVER,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    ) -> JetStreamContext.PullSubscription:
        """Bind to a durable pull consumer shared by every replica, creating it if needed. deliver_policy: where a
        consumer created now starts (NEW: only what comes after; ALL: the whole stream)."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=deliver_policy,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=max_deliver,
            filter_subject=filter_subject,
            filter_subjects=filter_subjects,
        )
        await self.js.add_consumer(stream, config)
        sub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        await self._count_max_deliveries(stream, durable)
        return sub

    async def _count_max_deliveries(self, stream: str, durable: str) -> None:
        """Count the messages JetStream stops delivering after `max_deliver`: no consumer ever sees them again,
        so this advisory is the only trace of them. A queue group: each advisory counts once across replicas."""
        assert self.nc is not None

        async def on_advisory(msg: Msg) -> None:
            self.max_deliveries.labels(stream=stream, consumer=durable).inc()
            try:
                detail = json.loads(msg.data)
            except ValueError:
                detail = {}
            self.log.warning(
                "JetStream gave up on message %s of %s after %s deliveries",
                detail.get("stream_seq", "?"),
                stream,
                detail.get("deliveries", "?"),
                extra={"consumer": durable},
            )

        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"
        await self.nc.subscribe(subject, queue=f"{durable}-advisories", cb=on_advisory)

    async def bind_when_ready(
        self, stream: str, durable: str, stop: asyncio.Event, **consumer: Any
    ) -> JetStreamContext.PullSubscription | None:
        """Bind to a consumer of a stream another service owns, waiting as long as that service is absent.

        A consumer that starts before the producer is normal (the reader may start last), so
        this waits without a deadline; None means the service was asked to stop meanwhile.
        """
        warned = False
        while not stop.is_set():
            try:
                return await self.durable_pull(stream, durable, **consumer)
            except NotFoundError:
                if not warned:
                    self.log.info("waiting for stream %s (its owner has not started yet)", stream)
                    warned = True
            await sleep_unless_stopped(stop, 0.5)
        return None

    async def stream_subjects(self, stream: str, subjects_filter: str) -> set[str]:
        """The subjects matching `subjects_filter` that have messages in the stream; none while it does not exist."""
        try:
            info = await self.js.stream_info(stream, subjects_filter=subjects_filter)
        except NotFoundError:
            return set()
        return set(info.state.subjects or {})

    async def acked_any(self, stream: str, durable: str) -> bool:
        """Whether a consumer has had messages acked: what it took is no longer delivered by it."""
        info = await self.js.consumer_info(stream, durable)
        return bool(info.ack_floor and info.ack_floor.stream_seq)

    async def backlog(self, stream: str, durable: str) -> int | None:
        """Messages waiting for or held by a consumer; 0 when it does not exist yet, None while NATS cannot say
        (restarting, away): the caller waits and asks again, as it would for a full queue."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            return 0
        except UNAVAILABLE as exc:
            _warn_unavailable("consumer info", exc)
            return None
        return (info.num_pending or 0) + (info.num_ack_pending or 0)

    async def lag(self, stream: str, durable: str) -> ConsumerLag:
        """How far a consumer is behind: its backlog, and how long ago the oldest message it has not acked was stored."""
        info = await self.js.consumer_info(stream, durable)
        pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
        if not pending:
            return ConsumerLag(0, 0.0)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        try:
            # The first message after the ack floor, whatever its subject (the one at floor + 1 may be gone).
            oldest = await self.js.get_msg(stream, seq=floor + 1, subject=">", next=True)
        except NotFoundError:
            return ConsumerLag(pending, 0.0)
        stored = oldest.time.timestamp() if oldest.time else time.time()
        return ConsumerLag(pending, max(0.0, time.time() - stored))


@dataclass(frozen=True)
class Outgoing:
    """One JetStream publish: where, what, and the message id that lets the stream drop a re-publish of it."""

    subject: str
    data: bytes
    msg_id: str

    @classmethod
    def of(cls, subject: str, message: Contract) -> Outgoing:
        return cls(subject, message.to_bytes(), message.msg_id())

    @property
    def headers(self) -> dict[str, str]:
        return {"Nats-Msg-Id": self.msg_id}


@dataclass(frozen=True)
class ConsumerLag:
    pending: int  # messages waiting for delivery or for their ack
    oldest_age: float  # seconds since the oldest of them was stored; 0 when there is none


_log = logging.getLogger("vigil.bus")
# What a restarting or unreachable server answers; each passes by itself once it is back.
UNAVAILABLE = (ServiceUnavailableError, NoRespondersError, ConnectionClosedError, NatsTimeoutError, asyncio.TimeoutError)
_UNAVAILABLE_LOG_EVERY = 10.0  # seconds between warnings while NATS is away (pulls retry twice a second)
_unavailable_logged_at = 0.0


async def fetch(sub: JetStreamContext.PullSubscription, batch: int, timeout: float = 1.0) -> list[Msg]:
    """Up to `batch` messages; an empty list when none came within `timeout`, or while NATS is away.

    A restarting server answers pulls with "no responders" or 503 until JetStream is back, and a closed
    connection is being re-established by the client: both pass by themselves, so the caller just pulls again.
    """
    try:
        return await sub.fetch(batch, timeout=timeout)
    except (TimeoutError, NatsTimeoutError):  # nats-py raises either, depending on the path
        return []
    except UNAVAILABLE as exc:
        _warn_unavailable("pull", exc)
        await asyncio.sleep(timeout)
        return []


def _warn_unavailable(what: str, exc: BaseException) -> None:
    global _unavailable_logged_at
    if time.monotonic() - _unavailable_logged_at >= _UNAVAILABLE_LOG_EVERY:
        _unavailable_logged_at = time.monotonic()
        _log.warning("%s failed while NATS is unavailable, retrying: %r", what, exc)
