"""Per-site broker users: RabbitMQ itself keeps one site's agent out of another's traffic.

Each test adds two uniquely named sites through the real management API and then talks
AMQP directly as site A, so what is proven is the broker's enforcement, not our client's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed, ConnectionClosed
from pydantic import SecretStr

from flotilla.broker.admin import (
    Credentials,
    ManagementClient,
    add_scheduler_user,
    add_site,
    remove_site,
)
from flotilla.broker.topology import (
    COMMANDS,
    DELIVERY_POLICY,
    REPORTS,
    core_topology,
    route,
    site_commands_queue,
)
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.errors import BrokerAdminError
from flotilla.schemas import (
    Lease,
    Provision,
    ProvisionDeployment,
    SiteKind,
    SiteLease,
    SitePlan,
    encode,
    new_id,
)
from flotilla.settings import ManagementSettings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]
WAIT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Sites:
    """Two sites added for one test, with the agents' logins."""

    a: str
    b: str
    login_a: Credentials
    login_b: Credentials


@pytest.fixture
async def client(management_url: str) -> AsyncIterator[ManagementClient]:
    """An administrator's management client."""
    async with ManagementClient(ManagementSettings(url=management_url)) as client:
        yield client


@pytest.fixture
async def admin_bus(amqp_url: str) -> AsyncIterator[RabbitBus]:
    """The administrator's bus, with the core topology declared (idempotent)."""
    async with RabbitBus(url=amqp_url, policy=DELIVERY_POLICY, name="test-admin") as bus:
        await bus.declare(core_topology())
        yield bus


@pytest.fixture
async def sites(
    unique: str, client: ManagementClient, admin_bus: RabbitBus, amqp_url: str
) -> AsyncIterator[Sites]:
    """Sites ``a-<unique>`` and ``b-<unique>``; their users and queues are removed afterwards."""
    a, b = f"a-{unique}", f"b-{unique}"
    url = SecretStr(amqp_url)
    try:
        login_a = await add_site(a, client=client, bus=admin_bus, bus_url=url)
        login_b = await add_site(b, client=client, bus=admin_bus, bus_url=url)
        yield Sites(a=a, b=b, login_a=login_a, login_b=login_b)
    finally:
        for site in (a, b):
            await remove_site(site, client=client)


@pytest.fixture
async def scheduler_login(
    unique: str, client: ManagementClient, amqp_url: str
) -> AsyncIterator[Credentials]:
    """A scheduler user under a unique name (the real one is shared), deleted afterwards."""
    user = f"flotilla-scheduler-{unique}"
    try:
        yield await add_scheduler_user(client=client, bus_url=SecretStr(amqp_url), user=user)
    finally:
        await client.delete_user(user)


@asynccontextmanager
async def _channel(login: Credentials) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(login.url.get_secret_value(), timeout=WAIT)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@asynccontextmanager
async def _receiver(
    channel: AbstractChannel, queue_name: str
) -> AsyncIterator[asyncio.Queue[AbstractIncomingMessage]]:
    received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    queue = await channel.get_queue(queue_name, ensure=False)
    tag = await queue.consume(received.put)
    try:
        yield received
    finally:
        await queue.cancel(tag)


async def _ignore(message: AbstractIncomingMessage) -> None:
    """A consumer that is never expected to receive anything."""


def _command(site: str) -> ProvisionDeployment:
    provision = Provision(
        deployment_id=new_id(),
        site=site,
        attempt=1,
        idempotency_key=new_id(),
        plan=SitePlan(nodes=[], group="test"),
        owner="test",
    )
    return ProvisionDeployment.create(provision, source="/flotilla/test")


def _lease(site: str) -> SiteLease:
    lease = Lease(
        site=site, kind=SiteKind.LOCAL, ttl=timedelta(seconds=30), sequence=0, agent_instance="t"
    )
    return SiteLease.create(lease, source=f"/flotilla/agent/{site}")


async def _publish(channel: AbstractChannel, exchange: str, key: str, **props: str) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"{}", **props), key, timeout=WAIT)  # type: ignore[arg-type]


async def test_site_cannot_report_for_another_site(sites: Sites) -> None:
    """Publishing ``site.<B>.lease`` on the reports exchange as site A is ACCESS_REFUSED."""
    async with _channel(sites.login_a) as channel:
        with pytest.raises(ChannelAccessRefused, match=f"site.{sites.b}.lease"):
            await _publish(channel, REPORTS, f"site.{sites.b}.lease")


@pytest.mark.parametrize("pattern", ["site.{b}.#", "#", "site.*.provision"])
async def test_site_cannot_bind_to_other_commands(sites: Sites, pattern: str) -> None:
    """Binding A's queue to the commands exchange beyond ``site.<A>.`` is ACCESS_REFUSED."""
    async with _channel(sites.login_a) as channel:
        queue = await channel.get_queue(sites.login_a.queue or "", ensure=False)
        with pytest.raises(ChannelAccessRefused):
            await queue.bind(COMMANDS, pattern.format(b=sites.b), timeout=WAIT)


async def test_site_cannot_consume_another_sites_queue(sites: Sites) -> None:
    """Consuming site B's command queue as site A is ACCESS_REFUSED."""
    async with _channel(sites.login_a) as channel:
        queue = await channel.get_queue(site_commands_queue(sites.b), ensure=False)
        with pytest.raises(ChannelAccessRefused, match="access to queue"):
            await queue.consume(_ignore, timeout=WAIT)


async def test_site_cannot_forge_user_id(sites: Sites) -> None:
    """A ``user_id`` other than the login is refused (RabbitMQ says PRECONDITION_FAILED 406)."""
    async with _channel(sites.login_a) as channel:
        with pytest.raises(ChannelPreconditionFailed, match="user_id property set to"):
            await _publish(channel, REPORTS, f"site.{sites.a}.lease", user_id=sites.login_b.user)


async def test_site_cannot_retry_into_another_sites_queue(sites: Sites) -> None:
    """A retry tier only takes site A's own queue as the routing key."""
    tier = DELIVERY_POLICY.retry.tier(0)
    async with _channel(sites.login_a) as channel:
        with pytest.raises(ChannelAccessRefused, match=tier):
            await _publish(channel, tier, site_commands_queue(sites.b))


async def test_site_reports_for_itself_with_its_user_id(
    sites: Sites, unique: str, amqp_url: str
) -> None:
    """Site A's own lease is delivered, stamped with A's broker-validated user_id."""
    async with await aio_pika.connect(amqp_url, timeout=WAIT) as observer:
        watch = await observer.channel()
        queue = await watch.declare_queue(f"test.{unique}.leases", exclusive=True)
        await queue.bind(REPORTS, f"site.{sites.a}.lease")
        async with _receiver(watch, queue.name) as received, _channel(sites.login_a) as channel:
            lease = _lease(sites.a)
            target = await channel.get_exchange(REPORTS, ensure=False)
            body = aio_pika.Message(encode(lease), user_id=sites.login_a.user)
            await target.publish(body, route(lease).routing_key, timeout=WAIT)
            message = await asyncio.wait_for(received.get(), WAIT)
    assert message.user_id == sites.login_a.user
    assert message.body == encode(lease)


async def test_site_receives_its_commands(sites: Sites, admin_bus: RabbitBus) -> None:
    """A command the scheduler side publishes to ``site.<A>.provision`` reaches A's consumer."""
    command = _command(sites.a)
    async with (
        _channel(sites.login_a) as channel,
        _receiver(channel, sites.login_a.queue or "") as received,
    ):
        await admin_bus.publish(command, route(command))
        message = await asyncio.wait_for(received.get(), WAIT)
        await message.ack()
    assert message.routing_key == f"site.{sites.a}.provision"
    assert message.message_id == command.id


async def test_site_retry_returns_to_its_own_queue(sites: Sites) -> None:
    """A's retry through the first tier comes back to A's queue after the tier's delay."""
    tier = DELIVERY_POLICY.retry.tier(0)
    own = sites.login_a.queue or ""
    async with _channel(sites.login_a) as channel, _receiver(channel, own) as received:
        await _publish(channel, tier, own, message_id="retry-1")
        message = await asyncio.wait_for(received.get(), WAIT)
        await message.ack()
    assert message.message_id == "retry-1"


async def test_add_site_again_rotates_the_password(
    sites: Sites, client: ManagementClient, admin_bus: RabbitBus, amqp_url: str
) -> None:
    """Re-adding a site gives a new password; open connections survive, the old one is refused."""
    async with _channel(sites.login_a) as channel:
        rotated = await add_site(sites.a, client=client, bus=admin_bus, bus_url=SecretStr(amqp_url))
        # An idempotent re-bind is a round trip that needs the (old) login's permissions.
        queue = await channel.get_queue(sites.login_a.queue or "", ensure=False)
        await queue.bind(COMMANDS, f"site.{sites.a}.#", timeout=WAIT)
        assert not channel.is_closed
    assert rotated.rotated
    assert rotated.password != sites.login_a.password
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(sites.login_a.url.get_secret_value(), timeout=WAIT)
    async with _channel(rotated) as channel:
        assert not channel.is_closed


async def test_remove_site_deletes_user_and_queue(sites: Sites, client: ManagementClient) -> None:
    """Removing a site deletes its user and queue, and RabbitMQ closes its open connections."""
    connection = await aio_pika.connect(sites.login_a.url.get_secret_value(), timeout=WAIT)
    closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def on_close(_: object, exc: BaseException | None = None) -> None:
        if not closed.done():
            closed.set_result(exc)

    connection.close_callbacks.add(on_close)
    assert await remove_site(sites.a, client=client)
    reason = await asyncio.wait_for(closed, WAIT)
    await connection.close()
    assert isinstance(reason, ConnectionClosed)
    assert not await client.user_exists(sites.login_a.user)
    assert not await client.delete_queue(sites.login_a.queue or "")


async def test_scheduler_commands_a_site(sites: Sites, scheduler_login: Credentials) -> None:
    """The scheduler's user publishes a site's command; the site sees the scheduler's user_id."""
    command = _command(sites.a)
    url = scheduler_login.url.get_secret_value()
    async with (
        RabbitBus(url=url, policy=DELIVERY_POLICY, name="test-scheduler") as bus,
        _channel(sites.login_a) as channel,
        _receiver(channel, sites.login_a.queue or "") as received,
    ):
        await bus.publish(command, route(command))
        message = await asyncio.wait_for(received.get(), WAIT)
        await message.ack()
    assert message.user_id == scheduler_login.user
    assert message.message_id == command.id


@pytest.mark.parametrize("exchange", [REPORTS, "flotilla.requests"])
async def test_scheduler_cannot_publish_as_a_site_or_upstream(
    sites: Sites, scheduler_login: Credentials, exchange: str
) -> None:
    """The scheduler's user may not write to the reports or requests exchanges."""
    async with _channel(scheduler_login) as channel:
        with pytest.raises(ChannelAccessRefused, match=f"exchange '{exchange}'"):
            await _publish(channel, exchange, f"site.{sites.a}.lease")


async def test_wrong_admin_password_is_a_broker_admin_error(management_url: str) -> None:
    """A refused login surfaces as BrokerAdminError with the status and the API's reason."""
    settings = ManagementSettings(url=management_url, password=SecretStr("wrong"))
    async with ManagementClient(settings) as client:
        with pytest.raises(BrokerAdminError, match=r"401 Unauthorized: not_authori[sz]ed"):
            await client.user_exists("guest")


async def test_unreachable_management_api_gives_a_hint() -> None:
    """A refused connection names the URL and suggests checking the management plugin."""
    settings = ManagementSettings(url="http://127.0.0.1:1")
    async with ManagementClient(settings, timeout=2.0) as client:
        with pytest.raises(BrokerAdminError, match="management plugin"):
            await client.user_exists("guest")
