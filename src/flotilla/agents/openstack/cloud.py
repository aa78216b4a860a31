"""The one way Flotilla calls openstacksdk: in a bounded executor, under a timeout, errors mapped.

openstacksdk blocks. ``Cloud`` owns a small thread pool and one ``Connection`` shared by its
threads (keystoneauth sessions are thread-safe and renew their token themselves). Every
call is bounded twice: openstacksdk's own HTTP timeout stops the thread, and an
``asyncio.timeout`` a little longer stops the waiting coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from openstack import config as sdk_config
from openstack import connection as sdk_connection
from openstack import exceptions as sdk_exceptions

from flotilla.agents.driver import ProvisioningError, SiteUnavailableError
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.error import dropped_connection, site_error
from flotilla.errors import ConfigurationError, FlotillaError

_log = structlog.get_logger("flotilla.agents.openstack")
_T = TypeVar("_T")
_GRACE = 5.0  # seconds the coroutine waits beyond the HTTP timeout
_READ_PAUSES = (0.2, 1.0)  # before a read is sent again after a dropped connection


class CloudState(StrEnum):
    """Where a ``Cloud`` is in its life."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class CloudClosedError(FlotillaError):
    """The OpenStack connection was used before it was opened or after it was closed."""


Connection = sdk_connection.Connection


class Cloud:
    """One OpenStack project reached through openstacksdk, off the event loop."""

    def __init__(self, settings: OpenStackSettings) -> None:
        self.settings = settings
        self.state = CloudState.UNOPENED
        self._executor: ThreadPoolExecutor | None = None
        self._connection: Connection | None = None
        self._timeout = settings.call_timeout.total_seconds()

    async def open(self) -> None:
        """Read clouds.yaml and start the threads; no request is sent yet.

        Raises:
            ConfigurationError: the cloud is not in clouds.yaml, or its entry is incomplete.
        """
        if self.state is not CloudState.UNOPENED:
            raise CloudClosedError(f"the OpenStack connection is {self.state.value}")
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix="flotilla-openstack"
        )
        loop = asyncio.get_running_loop()
        try:
            self._connection = await loop.run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.state = CloudState.CLOSED
            raise
        self.state = CloudState.OPEN
        _log.info("openstack_opened", cloud=self.settings.cloud, region=self.region)

    async def close(self) -> None:
        """Drop the connection and the threads; calls still running end on their own timeout."""
        if self.state is CloudState.CLOSED:
            return
        self.state = CloudState.CLOSED
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def region(self) -> str | None:
        """The region the connection works in."""
        if self._connection is None:
            return self.settings.region
        return self._connection.config.get_region_name() or self.settings.region

    async def call(self, action: str, fn: Callable[[Connection], _T]) -> _T:
        """Run ``fn(connection)`` in a thread, bounded, with SDK errors translated.

        Args:
            action: What the call does, in words, for error messages (``create server web-0``).
            fn: The blocking work; it should return plain data, not lazy SDK generators.

        Raises:
            ProvisioningError: the cloud refused (quota, no valid host, bad request...).
            SiteUnavailableError: the cloud could not be reached or did not answer in time.
            CloudClosedError: the connection is not open.
        """
        if self.state is not CloudState.OPEN or self._executor is None:
            raise CloudClosedError(f"the OpenStack connection is {self.state.value}")
        connection = self._connection
        assert connection is not None
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, connection))
        try:
            async with asyncio.timeout(self._timeout + _GRACE):
                return await asyncio.shield(future)
        except asyncio.CancelledError:
            await self._settle(future)
            raise
        except Exception as exc:
            mapped = site_error(exc, action=action)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc

    async def read(self, action: str, fn: Callable[[Connection], _T]) -> _T:
        """``call`` for work that only reads, sent again after a dropped connection.

        The cloud, or a proxy in front of it, may close a pooled connection while it is
        idle, and the next request on it then fails with a reset. A read can be sent again
        (twice, after a short pause); a write cannot, as it may have been carried out, so
        writes go through ``call`` and a failed one goes back to the agent, which retries
        the whole command. Timeouts and refusals are not tried again here.
        """
        for pause in _READ_PAUSES:
            try:
                return await self.call(action, fn)
            except SiteUnavailableError as exc:
                if not dropped_connection(exc):
                    raise
                _log.info("openstack_read_again", action=action, pause=pause, error=str(exc))
            await asyncio.sleep(pause)
        return await self.call(action, fn)

    async def _settle(self, future: asyncio.Future[Any]) -> None:
        """Let a cancelled call's thread finish (bounded by its own HTTP timeout).

        A thread cannot be stopped: a create it is sending may still succeed. Waiting for it
        means whoever looks next (a rollback, a redelivered command) sees what it made.
        """
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout + _GRACE):
                await asyncio.shield(future)

    def _connect(self) -> Connection:
        settings = self.settings
        files = [str(settings.clouds_file)] if settings.clouds_file else None
        overrides: dict[str, Any] = {"api_timeout": self._timeout}
        if settings.project:
            overrides["project_name"] = settings.project
        try:
            # Without a file named in the site file, openstacksdk's own lookup applies
            # (OS_CLIENT_CONFIG_FILE, then ./clouds.yaml, ~/.config/openstack, /etc/openstack).
            config = sdk_config.OpenStackConfig(config_files=files, load_envvars=files is None)
            region = config.get_one(cloud=settings.cloud, region_name=settings.region, **overrides)
        except sdk_exceptions.ConfigException as exc:
            raise ConfigurationError(f"openstack: {exc}") from exc
        return sdk_connection.Connection(config=region)


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` that raises its most telling error rather than a group.

    A permanent refusal (quota, no valid host) explains a failure better than the
    cancellations or connection errors of its siblings, so it wins.
    """
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as group:
        raise _most_telling(group) from None


def _most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves = list(_leaves(group))
    for kind in (ProvisioningError, FlotillaError, Exception):
        found = next((e for e in leaves if isinstance(e, kind)), None)
        if found is not None:
            return found
    return leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
