"""Settings shared by every service, read from the environment and `.env` (the seed's key names)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.settings_keys import check_keys
from shared.ttl import parse_ttl

# What names a service's own keys (`<name>_<setting>`, e.g. DETECTION_BATCH_SIZE): its role, where its class
# has one, else its service_name. Read from the class's defaults or the constructor's arguments, never from a
# settings file, so that the file cannot rename a service.
ROLE_ATTRIBUTES = ("role", "service_name")
BASE_NAME = "vigil"  # VigilSettings' own name: no service, so no prefix (VIGIL_ is the tools' namespace)


def role_prefixes(settings_cls: type[BaseSettings], init_kwargs: dict[str, Any] | None = None) -> list[str]:
    """The prefixes of a settings class's own keys, most specific first."""
    prefixes: list[str] = []
    for attribute in ROLE_ATTRIBUTES:
        field = settings_cls.model_fields.get(attribute)
        value = (init_kwargs or {}).get(attribute, field.default if field is not None else None)
        if isinstance(value, str) and value and value != BASE_NAME and value not in prefixes:
            prefixes.append(value)
    return prefixes


_USER_NAME = re.compile(r"[A-Za-z0-9_-]*")


class VigilSettings(BaseSettings):
    # One .env feeds every service, so each ignores the keys that belong to the others; load_settings
    # stops a service on a key that no service reads (shared/settings_keys.py).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A service's own keys (DETECTION_BATCH_SIZE) win over the shared ones (batch_size), wherever each is
        # given; within each kind, the environment wins over the file, as pydantic-settings does.
        init_kwargs = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        env_file = dotenv_settings.env_file if isinstance(dotenv_settings, DotEnvSettingsSource) else None
        own: list[PydanticBaseSettingsSource] = []
        for prefix in role_prefixes(settings_cls, init_kwargs):
            own.append(EnvSettingsSource(settings_cls, env_prefix=f"{prefix}_"))
            own.append(DotEnvSettingsSource(settings_cls, env_file=env_file, env_prefix=f"{prefix}_"))
        own.sort(key=lambda source: isinstance(source, DotEnvSettingsSource))
        return (init_settings, *own, env_settings, dotenv_settings, file_secret_settings)

    service_name: str = "vigil"
    instance: str = Field(default="", description="instance id; empty means host-pid")

    nats_host: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS server URL, or the URLs of a cluster's nodes separated by commas (tls://a:4222,tls://b:4222)",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="JetStream replicas of every stream Vigil creates (frames, results, tasks); at most the cluster's nodes",
    )
    frames_stream_max_msgs: int = Field(
        default=500_000,
        ge=10_000,
        description="most frame references FRAMES keeps (oldest dropped); it holds min(ttl_bucket, this / frames per s)",
    )
    results_stream_max_msgs: int = Field(
        default=2_000_000,
        ge=10_000,
        description="most results RESULTS keeps (oldest dropped): this / results per s is how long the registrator may lag",
    )
    results_stream_max_age: float = Field(
        default=24 * 3600.0, ge=3600, description="seconds RESULTS keeps a result the registrator has not absorbed"
    )
    nats_user: str = Field(default="", description="NATS user of this service's role; empty connects without credentials")
    nats_password_file: Path | None = Field(default=None, description="file holding nats_user's password (a Compose secret)")
    redis_host: str = Field(default="127.0.0.1", description="Redis host")
    redis_port: int = Field(default=6379, gt=0, lt=65536, description="Redis port")
    redis_user: str = Field(default="", description="Redis ACL user of this service's role; empty uses Redis's default user")
    redis_password_file: Path | None = Field(default=None, description="file holding redis_user's password (a Compose secret)")
    redis_tls: bool = Field(default=False, description="connect to Redis over TLS, checking its certificate against tls_ca_file")
    tls_ca_file: Path | None = Field(
        default=None,
        description="CA server certificates are checked against (tls:// NATS, redis_tls, https:// SeaweedFS); empty: system's",
    )
    tls_cert_file: Path | None = Field(
        default=None, description="this service's client certificate (a Compose secret); SeaweedFS's master asks for one"
    )
    tls_key_file: Path | None = Field(default=None, description="the private key of tls_cert_file (a Compose secret)")
    master_url: str = Field(default="http://127.0.0.1:9333", description="SeaweedFS master: assigns where each frame is stored")
    # The seed's meaning: its .env has volume_url=http://localhost:8888, the filer's address.
    volume_url: str = Field(
        default="http://127.0.0.1:8888",
        description="SeaweedFS address: the filer, as in the seed (or a volume server); workers may download from its host",
    )
    filer_url: str = Field(
        default="", description="SeaweedFS filer, where proof clips and key frames are kept; empty = volume_url"
    )
    storage_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="more hosts (host:port) workers may download from; volume servers the master names are trusted anyway",
    )
    # SeaweedFS's JWT keys (docs/security.md): each role is given the files of the keys it signs with, no more.
    storage_read_key_file: Path | None = Field(
        default=None, description="file holding SeaweedFS's volume read key (jwt.signing.read): signs frame downloads"
    )
    filer_write_key_file: Path | None = Field(
        default=None, description="file holding the filer's write key (jwt.filer_signing): signs clip uploads and deletes"
    )
    filer_read_key_file: Path | None = Field(
        default=None, description="file holding the filer's read key (jwt.filer_signing.read): signs clip and key frame reads"
    )
    download_max_mb: float = Field(
        default=32.0, gt=0, description="largest file a service downloads from SeaweedFS (a frame, a proof); more is refused"
    )
    image_max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="most pixels a downloaded JPEG may have, read from its header before decoding; more is refused",
    )
    ttl_bucket: str = Field(default="5m", description="TTL of the frame JPEGs in SeaweedFS (e.g. 30s, 5m, 1h, 2d)")

    topic_stream: str = Field(default="frames-stream", description="JetStream stream of the frame references (the seed's topic)")
    results_subject: str = Field(default="inference.results", description="subject the workers publish their results on")
    subject_prefix: str = Field(default="", description="prefix of every subject and stream; lets test runs share a server")
    routing_ttl: int = Field(default=10, ge=2, description="heartbeat TTL in seconds")

    TMP_PATH: Path = Field(default=Path("/tmp/vigil"), description="local copies of clips and key frames: TMP_PATH/<event_id>/")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(default=False, description="one JSON object per log line (for a log collector)")
    metrics_port: int = Field(default=0, ge=0, lt=65536, description="port of /metrics and /healthz; 0 disables")
    # Loopback: a service started by hand serves only this machine. Compose binds 0.0.0.0 so that
    # Prometheus in another container can scrape it.
    metrics_host: str = Field(
        default="127.0.0.1", description="address /metrics and /healthz bind to (0.0.0.0 serves other hosts)"
    )
    startup_timeout: float = Field(default=60.0, gt=0, description="seconds to wait for NATS/Redis/SeaweedFS at start")

    @field_validator("nats_host")
    @classmethod
    def _nats_urls_are_listed(cls, value: str) -> str:
        if not all(url.strip() for url in value.split(",")):
            raise ValueError("give one URL, or several separated by single commas, with none empty (tls://a:4222,tls://b:4222)")
        return value

    @property
    def nats_servers(self) -> list[str]:
        """nats_host's URLs, for nats.connect(servers=...)."""
        return [url.strip() for url in self.nats_host.split(",")]

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

    @model_validator(mode="after")
    def _client_certificate_has_its_key(self) -> VigilSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set tls_cert_file and tls_key_file together: a client certificate needs its key")
        return self

    @model_validator(mode="after")
    def _filer_defaults_to_volume_url(self) -> VigilSettings:
        # The seed names one SeaweedFS address, volume_url, and it is the filer.
        if not self.filer_url:
            self.filer_url = self.volume_url
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


def settings_file(given: str | None) -> Path | None:
    """The dotenv file to read: the one named, which must exist, else ./.env where there is one."""
    if given is None:
        default = Path(".env")
        return default if default.is_file() else None
    path = Path(given)
    # Any file that can be read, /dev/null included (no settings at all): only a missing one is a mistake.
    if not path.exists() or path.is_dir():
        print(
            f"settings file {given} (--env-file) not found: create it (cp .env.example {given}) or name another", file=sys.stderr
        )
        raise SystemExit(2)
    return path


def load_settings(cls: type[S], argv: list[str] | None = None, environ: dict[str, str] | None = None) -> S:
    """Parse the command line (`--check-config`, `--env-file`) and load settings, exiting with a clear message."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{cls.model_fields['service_name'].default}")
    parser.add_argument("--check-config", action="store_true", help="validate the settings and exit")
    parser.add_argument("--env-file", default=None, help="dotenv file to read, which must exist (default: .env if present)")
    args = parser.parse_args(argv)
    env_file = settings_file(args.env_file)
    # A mistyped key would leave its setting at the default without a word (a fake `person` watch, the
    # sample video instead of the camera): every service stops on it, whichever service it was meant for.
    unknown = check_keys(env_file, dict(os.environ) if environ is None else environ)
    if unknown:
        print("\n".join(unknown), file=sys.stderr)
        raise SystemExit(2)
    try:
        settings = cls(_env_file=env_file)  # type: ignore[call-arg]
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
