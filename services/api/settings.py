from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.api.auth import is_loopback, token_problem
from services.registrator.zones import SourceZones
from shared.credentials import CredentialsError, read_password
from shared.settings import VigilSettings


class ApiSettings(VigilSettings):
    # The token-rule errors must not quote the settings they were given: the token is one of them.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    service_name: str = "api"

    api_host: str = Field(default="127.0.0.1", description="address the api and dashboard bind to (0.0.0.0 in Docker)")
    api_port: int = Field(default=8080, ge=0, lt=65536, description="port of the api and dashboard; 0 picks a free one")
    api_published_host: str = Field(
        default="",
        description="in a container: the host address its port is published on (compose sets it); when set, it and "
        "not api_host decides whether other machines can reach the api",
    )
    api_token: SecretStr = Field(
        default=SecretStr(""),
        description="at least 32 random characters; every request then needs `Authorization: Bearer <token>` or a "
        "session from /login. Required unless the api is reachable from this machine only",
    )
    api_token_file: Path | None = Field(
        default=None,
        description="file holding api_token instead (a Compose secret; `make secrets` makes one); set one of the two",
    )
    api_session_hours: float = Field(default=12.0, gt=0, description="how long a login's session cookie lasts")
    api_cookie_secure: bool = Field(
        default=False, description="mark the session cookie Secure: set it when the api is served over HTTPS (a proxy)"
    )
    api_login_failures: int = Field(
        default=10, ge=1, description="failed logins or tokens a client address may send per minute before 429"
    )
    api_cors_origins: list[str] = Field(default_factory=list, description="origins allowed to call the api from a browser")
    api_page_limit: int = Field(default=200, ge=1, le=1000, description="most events one page may ask for")
    # The registrator's own key, read here to draw the zones: one value in .env for both, so what the dashboard
    # draws is what the registrator tests boxes against (a source added later is drawn once the api restarts).
    zones: dict[str, SourceZones] = Field(
        default_factory=dict, description="per source: zones (polygons) and lines (two points), as fractions of the frame (JSON)"
    )
    api_clip_max_mb: int = Field(
        default=256, ge=1, description="largest clip the api serves (streamed from the filer, never held in memory)"
    )

    @model_validator(mode="after")
    def _fails_closed(self) -> ApiSettings:
        token = self.api_token.get_secret_value()
        if self.api_token_file is not None:
            # Two tokens would leave the reader guessing which one the api took: one place only.
            if token:
                raise ValueError("api_token and api_token_file are both set: keep the file and remove api_token")
            try:
                token = read_password(self.api_token_file, "api_token_file")
            except CredentialsError as exc:
                raise ValueError(str(exc)) from None
            self.api_token = SecretStr(token)
        if token and (problem := token_problem(token)):
            raise ValueError(problem)
        reachable_on = self.api_published_host or self.api_host
        if not token and not is_loopback(reachable_on):
            raise ValueError(
                f"the api would serve {reachable_on or 'every address'!r} without a token: anyone who reaches it "
                "sees every camera's events. Set api_token (32+ random characters), or bind api_host to 127.0.0.1"
            )
        return self
