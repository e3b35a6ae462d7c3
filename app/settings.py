"""One typed settings object, read from the environment (prefix VMBACKUP_)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.db.urls import async_database_url
from app.hosts.uris import OPERATOR_PARAMETERS, UriRefused, check_host_uri

Scope = Literal["read", "operate", "admin"]
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class TokenSetting(BaseModel):
    """A bearer token as configured: its SHA-256, never the token itself."""

    name: str = Field(min_length=1, max_length=64)
    sha256: str
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.lower()
        if not SHA256_HEX.fullmatch(value):
            raise ValueError("must be the 64 hex digits of the token's SHA-256")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VMBACKUP_", extra="ignore")

    data_dir: Path = Path("/var/lib/vmbackup")
    database_url: str | None = None
    libvirt_uri: str = "qemu:///system"
    backup_root: Path | None = None
    scratch_root: Path | None = None
    restore_root: Path | None = None
    socket_root: Path = Path("/run/vmbackup")
    tokens: Annotated[list[TokenSetting], NoDecode] = []
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # HTTPS for the API (uvicorn's own TLS): a PEM certificate chain and its key.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # LOG_LEVEL as most services spell it; VMBACKUP_LOG_LEVEL wins when both are set.
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        validation_alias=AliasChoices("VMBACKUP_LOG_LEVEL", "LOG_LEVEL", "log_level"),
    )
    # Worker pool
    workers_per_host: int = Field(default=4, ge=1, le=64)
    lease_seconds: float = Field(default=30.0, gt=1)
    poll_seconds: float = Field(default=1.0, gt=0)
    default_pull_ttl_seconds: int = Field(default=7200, ge=1)
    # A host outage fails its backups only past this; their jobs go on meanwhile.
    host_outage_limit_seconds: float = Field(default=900.0, gt=0)
    # Checkpoints kept per domain (the newest ones can still be a base).
    checkpoints_per_domain: int = Field(default=4, ge=1, le=1000)
    # Restores and storage
    max_active_restores: int = Field(default=4, ge=1)
    free_space_reserve_bytes: int = Field(default=1024**3, ge=0)
    restore_timeout_seconds: float = Field(default=6 * 3600, gt=0)
    # Limits: each one refuses new work (429, or 422 for a ttl) rather than letting a
    # client queue, hold or export without bound.
    max_pull_ttl_seconds: int = Field(default=86400, ge=1, le=7 * 24 * 3600)
    max_queued_backups_per_domain: int = Field(default=16, ge=1)
    max_queued_backups_per_host: int = Field(default=64, ge=1)
    max_streams_per_token: int = Field(default=8, ge=1)
    # A pull export over plain TCP on a non-loopback address lets anyone on that
    # network read the disk: refused unless the operator says the network is trusted.
    allow_plain_tcp_exports: bool = False
    # Security
    allow_tcp_hosts: bool = False
    # Names a tokenless service also answers to (besides loopback names), e.g. a
    # reverse proxy's; a request naming any other is refused (DNS rebinding).
    allowed_hosts: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # LOG_LEVEL=INFO

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_json(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        # A JSON list, or the comma-separated list most deployments write.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [name.lower() for name in value]

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        return None if value is None else async_database_url(value)

    @field_validator(
        "data_dir",
        "backup_root",
        "scratch_root",
        "restore_root",
        "socket_root",
        "tls_cert",
        "tls_key",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _default_ttl_within_bound(self) -> Settings:
        if self.default_pull_ttl_seconds > self.max_pull_ttl_seconds:
            raise ValueError(
                f"DEFAULT_PULL_TTL_SECONDS ({self.default_pull_ttl_seconds}) exceeds "
                f"MAX_PULL_TTL_SECONDS ({self.max_pull_ttl_seconds})"
            )
        return self

    @model_validator(mode="after")
    def _local_uri_allowed(self) -> Settings:
        try:
            check_host_uri(
                self.libvirt_uri, allow_tcp=self.allow_tcp_hosts, parameters=OPERATOR_PARAMETERS
            )
        except UriRefused as refused:
            raise ValueError(f"VMBACKUP_LIBVIRT_URI is not allowed: {refused}") from None
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        # Whether the files are there is `serve`'s to check: `migrate` reads the
        # same settings and needs no certificate.
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("VMBACKUP_TLS_CERT and VMBACKUP_TLS_KEY go together: set both")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @model_validator(mode="after")
    def _tokens_off_loopback(self) -> Settings:
        if not self.tokens and not self.is_loopback:
            raise ValueError(
                f"refusing to listen on {self.host} without VMBACKUP_TOKENS: "
                "configure tokens or bind to a loopback address"
            )
        return self

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'vmbackup.db'}"

    @property
    def backups_dir(self) -> Path:
        return self.backup_root or self.data_dir / "backups"

    @property
    def scratch_dir(self) -> Path:
        return self.scratch_root or self.data_dir / "scratch"

    @property
    def restores_dir(self) -> Path:
        return self.restore_root or self.data_dir / "restores"
