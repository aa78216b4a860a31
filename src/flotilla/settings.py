"""Process settings: one root per process, ``FLOTILLA_`` prefix, ``__`` between nested groups.

For example ``FLOTILLA_BUS__URL=amqp://...`` sets ``Settings().bus.url``. Loaded once in
``main()`` and passed down; nothing below ``main`` reads the environment.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

EventLoop = Literal["uvloop", "asyncio"]
"""The event loop of a long-running process (see ``flotilla.runtime``)."""


class BusSettings(BaseModel):
    """How to reach the message broker."""

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="AMQP URL of RabbitMQ, with credentials (never logged).",
    )
    prefetch: int = Field(
        default=32, ge=1, le=10_000, description="Unacked deliveries per consumer."
    )
    publish_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for a publisher confirm, reconnects included.",
    )
    heartbeat: int = Field(default=30, ge=0, description="AMQP heartbeat interval in seconds.")
    reconnect_interval: float = Field(default=1.0, gt=0, description="Seconds between reconnects.")


class ManagementSettings(BaseModel):
    """How to reach RabbitMQ's management HTTP API (broker administration only)."""

    url: str = Field(default="http://127.0.0.1:15672", description="Management API base URL.")
    username: str = Field(default="guest", description="Administrator login.")
    password: SecretStr = Field(default=SecretStr("guest"), description="Administrator password.")
    vhost: str = Field(default="/", description="The virtual host Flotilla lives in.")


class MqttSettings(BaseModel):
    """Where the public event stream is mirrored for light consumers."""

    host: str = Field(default="127.0.0.1", description="Mosquitto host.")
    port: int = Field(default=1883, ge=1, le=65535, description="Mosquitto port.")
    username: str | None = Field(default=None, description="MQTT login, if the broker wants one.")
    password: SecretStr | None = Field(default=None, description="MQTT password.")
    topic_prefix: str = Field(default="flotilla/events", description="Prefix of mirrored topics.")


class SchedulerSettings(BaseModel):
    """The scheduler process."""

    store_url: SecretStr = Field(
        default=SecretStr("sqlite+aiosqlite:///flotilla.db"),
        description="Database URL: SQLite by default, postgresql+asyncpg://... in production.",
    )
    sla_file: Path | None = Field(
        default=None, description="YAML list of SLAs: id, group, site, preference, limits."
    )
    site_timeout: timedelta = Field(
        default=timedelta(minutes=30), gt=timedelta(0), description="Default per-site timeout."
    )
    max_sites: int = Field(default=3, ge=1, le=100, description="Default sites to try.")
    grace: timedelta = Field(
        default=timedelta(seconds=30), description="Time sites get to report after a restart."
    )
    verify_senders: bool = Field(
        default=True, description="Require site reports to come from that site's broker user."
    )
    prefetch: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description=(
            "Messages of each queue (requests, reports, heartbeats) the scheduler works on at"
            " once; more gives more placements per second and more delay before each"
            " command (see bench/scheduler.py)."
        ),
    )
    relay_process: bool = Field(
        default=True,
        description=(
            "Publish the outbox from a child process of the scheduler, so that publishing"
            " runs beside deciding instead of taking turns with it on one core (see"
            " bench/scheduler.py); false publishes from the scheduler's own process."
        ),
    )


class GatewaySettings(BaseModel):
    """The REST gateway process: where it listens, how it checks tokens, how it calls back."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port to listen on.")
    auth: bool = Field(
        default=True,
        description="Check OIDC bearer tokens; turning it off makes every caller 'local'.",
    )
    oidc_issuer: str | None = Field(
        default=None, description="Expected token issuer (iss), e.g. https://iam.example.org/."
    )
    oidc_audience: str | None = Field(
        default=None, description="Expected token audience (aud); not checked when unset."
    )
    oidc_jwks_url: str | None = Field(
        default=None,
        description="The issuer's JWKS URL; discovered from the issuer's metadata when unset.",
    )
    oidc_group_claim: str = Field(
        default="groups",
        description="Token claim listing the caller's groups (wlcg.groups is also read).",
    )
    oidc_admin_group: str = Field(
        default="flotilla-admins", description="Members of this group see every deployment."
    )
    callback_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 signature on callbacks (X-Flotilla-Signature).",
    )
    callback_retries: int = Field(
        default=5, ge=0, le=20, description="Retries of a failed callback after the first try."
    )
    callback_backoff: timedelta = Field(
        default=timedelta(seconds=1),
        gt=timedelta(0),
        description="Wait before the first callback retry; doubles with each retry.",
    )
    callback_timeout: timedelta = Field(
        default=timedelta(seconds=10), gt=timedelta(0), description="Bound of one callback POST."
    )
    callback_private_networks: bool = Field(
        default=False,
        description="Allow callbacks to loopback, private, link-local and reserved addresses;"
        " off, a callback URL cannot make the gateway reach internal services.",
    )
    create_wait: timedelta = Field(
        default=timedelta(seconds=2),
        ge=timedelta(0),
        description="How long a create or delete waits for the scheduler to record it.",
    )
    poll_interval: timedelta = Field(
        default=timedelta(milliseconds=300),
        gt=timedelta(0),
        description="How often event streams and callbacks look for new journal entries.",
    )
    heartbeat_queue: str = Field(
        default="flotilla.gateway.heartbeats",
        description="Queue of site leases and capacity for /v1/sites; one per gateway replica.",
    )


class LogSettings(BaseModel):
    """Logging output."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level written."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise."
    )


class Settings(BaseSettings):
    """Root settings of a Flotilla process."""

    model_config = SettingsConfigDict(
        env_prefix="FLOTILLA_", env_nested_delimiter="__", extra="forbid"
    )

    bus: BusSettings = Field(default_factory=BusSettings, description="Message broker.")
    management: ManagementSettings = Field(
        default_factory=ManagementSettings, description="Broker management API."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT mirror.")
    scheduler: SchedulerSettings = Field(
        default_factory=SchedulerSettings, description="Scheduler process."
    )
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings, description="REST gateway process."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    event_loop: EventLoop = Field(
        default="uvloop",
        description="Event loop of the scheduler, gateway, agent and `up` processes.",
    )
