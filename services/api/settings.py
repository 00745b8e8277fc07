from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import VigilSettings


class ApiSettings(VigilSettings):
    service_name: str = "api"

    api_host: str = Field(default="127.0.0.1", description="address the api and dashboard bind to (0.0.0.0 in Docker)")
    api_port: int = Field(default=8080, ge=0, lt=65536, description="port of the api and dashboard; 0 picks a free one")
    api_token: SecretStr = Field(
        default=SecretStr(""), description="when set, every request needs `Authorization: Bearer <token>` or `?token=`"
    )
    api_cors_origins: list[str] = Field(default_factory=list, description="origins allowed to call the api from a browser")
    api_page_limit: int = Field(default=200, ge=1, le=1000, description="most events one page may ask for")
    api_clip_max_mb: int = Field(
        default=256, ge=1, description="largest clip the api serves (streamed from the filer, never held in memory)"
    )
