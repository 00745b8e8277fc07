"""Where notices go: a webhook (a signed JSON POST) or an MQTT broker (QoS 1). Each sends one notice once; the
retries, and giving up, are the service's (services/notifier/service.py), the same for both."""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import logging
import ssl

import aiohttp
import aiomqtt

from services.notifier.settings import NoticeRule, NotifierSettings, Webhook
from shared.credentials import read_password, tls_context
from shared.pause import sleep_unless_stopped
from shared.retry import backoff_delays

SIGNATURE_HEADER = "X-Vigil-Signature"
# Answers a retry may change: the receiver is busy, restarting or limiting us. Any other 4xx will not change.
_RETRYABLE_STATUS = frozenset({408, 425, 429})


class DeliveryError(Exception):
    """The destination did not take the notice this time; `final` when trying again cannot help."""

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


def signature(secret: bytes, body: bytes) -> str:
    """The X-Vigil-Signature value: `sha256=` and the hex HMAC-SHA256 of the exact body (GitHub's scheme)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Sender(abc.ABC):
    name: str
    rule: NoticeRule

    @abc.abstractmethod
    async def send(self, body: bytes) -> None:
        """Deliver once; raises DeliveryError when the destination did not accept it."""


class WebhookSender(Sender):
    def __init__(self, index: int, hook: Webhook, session: aiohttp.ClientSession, secret: bytes, timeout: float) -> None:
        self.name = f"webhook-{index}"
        self.rule = hook
        self.url = hook.url
        self.host = hook.host
        self.session = session
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, body: bytes) -> None:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.secret, body)}
        try:
            async with self.session.post(self.url, data=body, headers=headers, timeout=self.timeout) as resp:
                if 200 <= resp.status < 300:
                    return
                final = 400 <= resp.status < 500 and resp.status not in _RETRYABLE_STATUS
                raise DeliveryError(f"{self.host} answered HTTP {resp.status}", final=final)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{self.host}: {type(exc).__name__}: {exc}") from None


class MqttSender(Sender):
    """One connection to the broker, kept up by `keep_connected` (reconnecting with backoff); `send` waits for it."""

    name = "mqtt"

    def __init__(self, settings: NotifierSettings, identifier: str, stop: asyncio.Event) -> None:
        self.settings = settings
        self.rule = settings.mqtt_rule
        self.topic = f"{settings.mqtt_topic_prefix}/events"
        self.identifier = identifier
        self.stop = stop
        self.timeout = settings.mqtt_timeout
        self.log = logging.getLogger("vigil.notifier.mqtt")
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._password = read_password(settings.mqtt_password_file, "mqtt_password_file") if settings.mqtt_password_file else None
        self._tls: ssl.SSLContext | None = tls_context(settings) if settings.mqtt_tls else None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def keep_connected(self) -> None:
        s = self.settings
        delays = backoff_delays(0.5, 30.0)
        failing = False
        while not self.stop.is_set():
            client = aiomqtt.Client(
                s.mqtt_host,
                s.mqtt_port,
                username=s.mqtt_user or None,
                password=self._password,
                identifier=self.identifier,
                tls_context=self._tls,
                timeout=self.timeout,
                keepalive=30,
                max_inflight_messages=s.notify_batch,  # QoS 1 acks in flight for a whole batch, not paho's 20
            )
            try:
                async with client:
                    self._client = client
                    self._connected.set()
                    self.log.info("connected to the MQTT broker %s:%d", s.mqtt_host, s.mqtt_port)
                    failing, delays = False, backoff_delays(0.5, 30.0)
                    # Nothing is subscribed: the iteration only ends, raising, when the connection is lost.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                if not failing:
                    self.log.warning("MQTT broker %s:%d unreachable, reconnecting: %s", s.mqtt_host, s.mqtt_port, exc)
                    failing = True
            finally:
                self._connected.clear()
                self._client = None
            await sleep_unless_stopped(self.stop, next(delays))

    async def send(self, body: bytes) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.timeout)
        except TimeoutError:
            raise DeliveryError(f"not connected to the MQTT broker {self.settings.mqtt_host}:{self.settings.mqtt_port}") from None
        client = self._client
        if client is None:
            raise DeliveryError("the MQTT connection was lost")
        try:
            await client.publish(self.topic, body, qos=1, timeout=self.timeout)
        except aiomqtt.MqttError as exc:
            raise DeliveryError(f"MQTT publish failed: {exc}") from None
