"""Broker administration: per-site users with least-privilege permissions.

A site's agent gets its own RabbitMQ user. Vhost permissions decide which exchanges and
queues it may touch at all; topic permissions narrow that down to routing keys that name its
own site, so one agent can neither read another site's commands nor speak for another site.
Together with the broker-validated ``user_id`` this is what isolates sites from each other.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import structlog
from pydantic import SecretStr, TypeAdapter, ValidationError

from flotilla.broker.topology import (
    COMMANDS,
    DEAD_LETTER,
    DELIVERY_POLICY,
    EVENTS,
    REPORTS,
    REQUESTS,
    SCHEDULER_USER,
    site_commands_queue,
    site_topology,
    site_user,
)
from flotilla.bus import Bus
from flotilla.errors import BrokerAdminError, PermanentError
from flotilla.schemas.envelope import SiteName
from flotilla.settings import ManagementSettings

_log = structlog.get_logger("flotilla.broker")
_SITE_NAME: TypeAdapter[str] = TypeAdapter(SiteName)
_NOTHING = "^$"
_SCHEDULER_QUEUES = r"flotilla\.scheduler\..*"
_CONNECT_HINT = "is RabbitMQ running and the management plugin enabled?"


@dataclass(frozen=True, slots=True, kw_only=True)
class Permissions:
    """A user's vhost permissions: regexes over exchange and queue names."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicPermission:
    """A user's permission on one topic exchange: regexes over routing keys."""

    exchange: str
    write: str
    read: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """How a component connects to the broker; the password never appears in a repr."""

    user: str
    password: SecretStr
    url: SecretStr
    rotated: bool = False
    queue: str | None = None

    def env(self) -> dict[str, str]:
        """Environment variables that configure the component's bus connection."""
        return {"FLOTILLA_BUS__URL": self.url.get_secret_value()}


class ManagementClient:
    """A small async client of RabbitMQ's management HTTP API.

    Use it as an async context manager. Every failure, from a refused connection to a 4xx
    answer, is raised as ``BrokerAdminError`` with the status and the API's reason.
    """

    def __init__(
        self,
        settings: ManagementSettings,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def vhost(self) -> str:
        """The virtual host administered."""
        return self._settings.vhost

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            base_url=self._settings.url.rstrip("/") + "/api",
            auth=(self._settings.username, self._settings.password.get_secret_value()),
            timeout=self._timeout,
            transport=self._transport,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def user_exists(self, user: str) -> bool:
        """Whether a broker user exists."""
        return await self._request("GET", f"/users/{_q(user)}", missing_ok=True) is not None

    async def put_user(self, user: str, password: SecretStr, *, tags: str = "") -> None:
        """Create a user, or set a new password (and tags) on an existing one."""
        body = {"password": password.get_secret_value(), "tags": tags}
        await self._request("PUT", f"/users/{_q(user)}", json=body)

    async def delete_user(self, user: str) -> bool:
        """Delete a user with its permissions; ``False`` if there was none."""
        return await self._request("DELETE", f"/users/{_q(user)}", missing_ok=True) is not None

    async def set_permissions(self, user: str, permissions: Permissions) -> None:
        """Set a user's vhost permissions, replacing earlier ones."""
        body = {
            "configure": permissions.configure,
            "write": permissions.write,
            "read": permissions.read,
        }
        await self._request("PUT", f"/permissions/{_q(self.vhost)}/{_q(user)}", json=body)

    async def set_topic_permission(self, user: str, permission: TopicPermission) -> None:
        """Set a user's topic permission on one exchange, replacing an earlier one."""
        body = {"exchange": permission.exchange, "write": permission.write, "read": permission.read}
        await self._request("PUT", f"/topic-permissions/{_q(self.vhost)}/{_q(user)}", json=body)

    async def delete_queue(self, queue: str) -> bool:
        """Delete a queue and its messages; ``False`` if there was none."""
        path = f"/queues/{_q(self.vhost)}/{_q(queue)}"
        return await self._request("DELETE", path, missing_ok=True) is not None

    async def _request(
        self, method: str, path: str, *, json: Any = None, missing_ok: bool = False
    ) -> httpx.Response | None:
        if self._client is None:
            raise BrokerAdminError("the management client is not open")
        try:
            response = await self._client.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise BrokerAdminError(f"{method} {path}: management API timed out") from exc
        except httpx.TransportError as exc:
            where = self._settings.url
            raise BrokerAdminError(
                f"cannot reach the management API at {where}: {exc}; {_CONNECT_HINT}"
            ) from exc
        if missing_ok and response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.is_error:
            raise BrokerAdminError(f"{method} {response.url.path}: {_describe(response)}")
        return response


def site_permissions(site: str) -> tuple[Permissions, tuple[TopicPermission, ...]]:
    """What a site's agent may do: its own queue, its own routing keys, nothing else."""
    name = re.escape(site)
    own_queue = site_commands_queue(site)
    permissions = Permissions(
        configure=rf"^flotilla\.site\.{name}\..*",
        write=_one_of(_escaped(own_queue, REPORTS, DEAD_LETTER, *_retry_tiers())),
        read=_one_of(_escaped(own_queue, COMMANDS)),
    )
    own_keys = rf"^site\.{name}\."
    retry_key = f"^{re.escape(own_queue)}$"  # a retry is routed by its origin queue's name
    topics = (
        TopicPermission(exchange=COMMANDS, write=_NOTHING, read=own_keys),
        TopicPermission(exchange=REPORTS, write=own_keys, read=_NOTHING),
        *(TopicPermission(exchange=t, write=retry_key, read=_NOTHING) for t in _retry_tiers()),
    )
    return permissions, topics


def scheduler_permissions() -> Permissions:
    """What the scheduler may do: command sites, publish events, consume its own queues.

    It may redeclare its own queues but not the core topology (``broker init`` does that as
    the administrator): declaring the retry tiers would need write access to the default
    exchange, which reaches every queue by name and so would bypass the topic permissions.
    """
    return Permissions(
        configure=f"^{_SCHEDULER_QUEUES}",
        write=_one_of(
            [*_escaped(COMMANDS, EVENTS, DEAD_LETTER, *_retry_tiers()), _SCHEDULER_QUEUES]
        ),
        read=_one_of([*_escaped(REQUESTS, REPORTS), _SCHEDULER_QUEUES]),
    )


async def add_site(
    site: str, *, client: ManagementClient, bus: Bus, bus_url: SecretStr
) -> Credentials:
    """Create (or rotate) a site's broker user, its permissions, and its command queue.

    Args:
        site: the site name, as in messages and routing keys.
        client: an open management client (administrator).
        bus: an open bus with the administrator's login, to declare the site's queue.
        bus_url: the AMQP URL agents use; its credentials are replaced by the site's.

    Returns:
        The agent's credentials; ``rotated`` says the user existed and got a new password.
    """
    _validate(site)
    user = site_user(site)
    await bus.declare(site_topology(site))
    permissions, topics = site_permissions(site)
    credentials = await _provision(client, user, permissions, topics, bus_url=bus_url)
    _log.info("site_added", site=site, user=user, rotated=credentials.rotated)
    return _with_queue(credentials, site_commands_queue(site))


async def remove_site(site: str, *, client: ManagementClient, keep_queue: bool = False) -> bool:
    """Delete a site's broker user and, unless ``keep_queue``, its command queue.

    Returns:
        Whether the user existed.
    """
    _validate(site)
    existed = await client.delete_user(site_user(site))
    if not keep_queue:
        await client.delete_queue(site_commands_queue(site))
    _log.info("site_removed", site=site, user_existed=existed, queue_kept=keep_queue)
    return existed


async def add_scheduler_user(
    *, client: ManagementClient, bus_url: SecretStr, user: str = SCHEDULER_USER
) -> Credentials:
    """Create (or rotate) the scheduler's broker user with its permissions."""
    credentials = await _provision(client, user, scheduler_permissions(), (), bus_url=bus_url)
    _log.info("scheduler_user_added", user=user, rotated=credentials.rotated)
    return credentials


async def _provision(
    client: ManagementClient,
    user: str,
    permissions: Permissions,
    topics: Iterable[TopicPermission],
    *,
    bus_url: SecretStr,
) -> Credentials:
    rotated = await client.user_exists(user)
    password = SecretStr(secrets.token_urlsafe(32))
    await client.put_user(user, password)
    # Topic permissions first: an exchange without one is open to every routing key, so
    # granting vhost write before them would briefly let the user speak for any site.
    # Earlier topic permissions on exchanges no longer listed are left: they only restrict.
    for topic in topics:
        await client.set_topic_permission(user, topic)
    await client.set_permissions(user, permissions)
    url = SecretStr(_with_login(bus_url.get_secret_value(), user, password))
    return Credentials(user=user, password=password, url=url, rotated=rotated)


def _with_queue(credentials: Credentials, queue: str) -> Credentials:
    return Credentials(
        user=credentials.user,
        password=credentials.password,
        url=credentials.url,
        rotated=credentials.rotated,
        queue=queue,
    )


def _validate(site: str) -> None:
    try:
        _SITE_NAME.validate_python(site)
    except ValidationError:
        raise PermanentError(
            f"invalid site name {site!r}: use lowercase letters, digits and inner hyphens "
            "(at most 63 characters)",
            site=site,
        ) from None


def _retry_tiers() -> list[str]:
    retry = DELIVERY_POLICY.retry
    return list(dict.fromkeys(retry.tier_name(delay) for delay in retry.delays))


def _escaped(*names: str) -> list[str]:
    return [re.escape(name) for name in names]


def _one_of(patterns: Iterable[str]) -> str:
    """A regex matching a whole name that matches one of ``patterns``."""
    return "^(?:" + "|".join(patterns) + ")$"


def _with_login(url: str, user: str, password: SecretStr) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    login = f"{quote(user, safe='')}:{quote(password.get_secret_value(), safe='')}"
    return urlunsplit(parts._replace(netloc=f"{login}@{host}"))


def _describe(response: httpx.Response) -> str:
    """The status and the API's own reason, e.g. ``401 Unauthorized: not_authorised``."""
    status = f"{response.status_code} {response.reason_phrase}".strip()
    try:
        body = response.json()
    except ValueError:
        return status
    if not isinstance(body, dict):
        return status
    reason = ": ".join(str(body[k]) for k in ("error", "reason") if body.get(k))
    return f"{status}: {reason}" if reason else status


def _q(segment: str) -> str:
    # The default vhost is "/", which must travel as %2F inside one path segment.
    return quote(segment, safe="")
