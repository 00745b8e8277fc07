from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.notices import EventNotice, NoticeType
from shared.secrets import scrub
from shared.settings import VigilSettings


class NoticeRule(BaseModel):
    """Which notices a destination gets; an empty list lets every value through."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list, description="source ids")
    labels: list[str] = Field(default_factory=list, description="event labels")
    types: list[NoticeType] = Field(default_factory=list, description="new, update, end")

    def wants(self, notice: EventNotice) -> bool:
        return (
            (not self.sources or notice.source_id in self.sources)
            and (not self.labels or notice.after.label in self.labels)
            and (not self.types or notice.type in self.types)
        )


class Webhook(NoticeRule):
    url: str = Field(description="http:// or https:// address the notices are POSTed to")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{scrub(value)!r} is not an http:// or https:// URL with a host")
        return value

    @property
    def host(self) -> str:
        """How logs name it: scheme, host and port only (a webhook's path or query often holds its token)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class NotifierSettings(VigilSettings):
    service_name: str = "notifier"

    # e.g. [{"url": "https://hooks.example/vigil", "labels": ["person"], "types": ["new", "end"]}]
    webhooks: list[Webhook] = Field(
        default_factory=list, description="webhook destinations (JSON list): url, and optional sources, labels, types"
    )
    webhook_secret_file: Path | None = Field(
        default=None, description="file holding the key of the X-Vigil-Signature HMAC (a Compose secret); needed for webhooks"
    )
    webhook_timeout: float = Field(default=5.0, gt=0, description="seconds one webhook POST may take")
    mqtt_host: str = Field(default="", description="MQTT broker host; empty: no MQTT")
    mqtt_port: int = Field(default=1883, gt=0, lt=65536, description="MQTT broker port (8883 is the usual one for TLS)")
    mqtt_user: str = Field(default="", description="MQTT user name; empty connects without one")
    mqtt_password_file: Path | None = Field(default=None, description="file holding mqtt_user's password (a Compose secret)")
    mqtt_tls: bool = Field(default=False, description="connect to the broker over TLS, checking it against tls_ca_file")
    mqtt_topic_prefix: str = Field(default="vigil", description="notices go to <prefix>/events, as Frigate's to frigate/events")
    mqtt_rule: NoticeRule = Field(
        default_factory=NoticeRule, description="which notices go to MQTT (JSON): optional sources, labels, types"
    )
    mqtt_timeout: float = Field(default=5.0, gt=0, description="seconds a QoS 1 publish may wait for the broker's ack")
    notify_retries: int = Field(default=6, ge=0, description="retries of a failed delivery before it is dead-lettered")
    notify_retry_initial: float = Field(default=0.5, gt=0, description="seconds before the first retry; doubled each time")
    notify_retry_max: float = Field(default=30.0, gt=0, description="most seconds between two retries")
    notify_batch: int = Field(default=64, ge=1, le=1024, description="notices fetched and delivered together")
    notify_ack_wait: float = Field(default=30.0, gt=0, description="seconds before notices a dead notifier held are redelivered")

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _plain_topic(cls, value: str) -> str:
        if not value or any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
            raise ValueError("use a plain topic level or path without wildcards (+, #) or outer slashes, e.g. vigil")
        return value

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> NotifierSettings:
        if self.webhooks and self.webhook_secret_file is None:
            raise ValueError("webhooks are set but webhook_secret_file is not: set it to a file holding the signing key")
        if self.mqtt_password_file is not None and not self.mqtt_user:
            raise ValueError("mqtt_password_file is set but mqtt_user is empty: set mqtt_user too")
        return self

    @property
    def destinations(self) -> int:
        return len(self.webhooks) + (1 if self.mqtt_host else 0)
