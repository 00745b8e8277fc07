"""Settings shared by every service, read from the environment and `.env` (the seed's key names)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.ttl import parse_ttl

_USER_NAME = re.compile(r"[A-Za-z0-9_-]*")


class VigilSettings(BaseSettings):
    # One .env feeds every service, so each ignores the keys that belong to the others.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    service_name: str = "vigil"
    instance: str = Field(default="", description="instance id; empty means host-pid")

    nats_host: str = "nats://127.0.0.1:4222"
    nats_user: str = Field(default="", description="NATS user of this service's role; empty connects without credentials")
    nats_password_file: Path | None = Field(default=None, description="file holding nats_user's password (a Compose secret)")
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=6379, gt=0, lt=65536)
    redis_user: str = Field(default="", description="Redis ACL user of this service's role; empty uses Redis's default user")
    redis_password_file: Path | None = Field(default=None, description="file holding redis_user's password (a Compose secret)")
    master_url: str = "http://127.0.0.1:9333"
    volume_url: str = "http://127.0.0.1:8080"
    filer_url: str = "http://127.0.0.1:8888"
    # Hosts a worker may download frames from, besides the ones of volume_url and master_url
    # (several volume servers in a multi-machine fleet).
    storage_allowed_hosts: list[str] = Field(default_factory=list)
    ttl_bucket: str = "5m"

    topic_stream: str = "frames-stream"
    results_subject: str = "inference.results"
    subject_prefix: str = Field(default="", description="prefix of every subject and stream; lets test runs share a server")
    routing_ttl: int = Field(default=10, ge=2, description="heartbeat TTL in seconds")

    TMP_PATH: Path = Path("/tmp/vigil")
    log_level: str = "INFO"
    log_json: bool = False
    metrics_port: int = Field(default=0, ge=0, lt=65536, description="port of /metrics and /healthz; 0 disables")
    metrics_host: str = "127.0.0.1"
    startup_timeout: float = Field(default=60.0, gt=0, description="seconds to wait for NATS/Redis/SeaweedFS at start")

    @field_validator("ttl_bucket")
    @classmethod
    def _ttl_parses(cls, value: str) -> str:
        parse_ttl(value)
        return value

    @field_validator("nats_user", "redis_user")
    @classmethod
    def _user_is_a_plain_name(cls, value: str) -> str:
        # A NATS user name is also the last token of the user's inbox prefix (_INBOX.<user>).
        if not _USER_NAME.fullmatch(value):
            raise ValueError("use letters, digits, '-' and '_' only (e.g. reader, worker-detection)")
        return value

    @model_validator(mode="after")
    def _password_files_have_users(self) -> VigilSettings:
        for store in ("nats", "redis"):
            if getattr(self, f"{store}_password_file") is not None and not getattr(self, f"{store}_user"):
                raise ValueError(f"{store}_password_file is set but {store}_user is empty: set {store}_user too")
        return self


class TaskQueueSettings(VigilSettings):
    """How long a task may live and how often it is delivered: read by the workers, which own the task
    queues, and by the registrator, which waits for the tasks' results. One .env feeds both, so both check
    that the numbers agree, and a bad combination stops the service at start with the reason."""

    ack_wait: float = Field(default=10.0, gt=0, description="seconds before an unacked task goes to another replica")
    task_max_deliver: int = Field(default=4, ge=1, description="deliveries of one task before JetStream gives it up")
    task_max_age: float = Field(default=45.0, gt=0, description="seconds a task may wait before it is worthless")

    @model_validator(mode="after")
    def _tasks_outlive_their_deliveries(self) -> TaskQueueSettings:
        # The work queue removes a task by age whatever its state: one that dies with its worker must still be
        # there when ack_wait runs out, for every delivery it is allowed (issue 15: 30 s and 30 s lost them all).
        deliveries = self.ack_wait * self.task_max_deliver
        if self.task_max_age <= deliveries:
            raise ValueError(
                f"task_max_age ({self.task_max_age:g} s) must exceed ack_wait x task_max_deliver "
                f"({self.ack_wait:g} s x {self.task_max_deliver} = {deliveries:g} s): a task held by a worker "
                "that died would expire before it is delivered again"
            )
        return self


S = TypeVar("S", bound=VigilSettings)


def load_settings(cls: type[S], argv: list[str] | None = None) -> S:
    """Parse the command line (`--check-config`, `--env-file`) and load settings, exiting with a clear message."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{cls.model_fields['service_name'].default}")
    parser.add_argument("--check-config", action="store_true", help="validate the settings and exit")
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default: .env)")
    args = parser.parse_args(argv)
    try:
        settings = cls(_env_file=args.env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        # Field names only: values may be secrets.
        # A check of several settings together has no single field: its message names them.
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        print(f"invalid configuration for {cls.__name__}: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.check_config:
        print(f"configuration OK: {cls.__name__} ({len(cls.model_fields)} settings)")
        raise SystemExit(0)
    return settings
