"""A federation in memory behind a gateway: scheduler, two simulated sites, an OIDC issuer.

``Rig`` runs a real ``SchedulerService`` on a ``MemoryBroker`` and a ``Gateway`` served on
loopback; the sites are the test itself, taking commands from their queues and publishing
reports with their own logins. ``Issuer`` is a local OIDC issuer: keys generated in the
test, metadata and JWKS served by a small aiohttp app.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from flotilla.broker import (
    DELIVERY_POLICY,
    core_topology,
    route,
    site_commands_queue,
    site_topology,
    site_user,
)
from flotilla.broker.topology import mirror_topology
from flotilla.bus import Delivery
from flotilla.bus.memory import MemoryBroker, MemoryBus
from flotilla.gateway import Authenticator, Gateway, OidcAuthenticator
from flotilla.scheduler.lifecycle import Lifecycle
from flotilla.scheduler.placement import Placer, Sla
from flotilla.scheduler.registry import SiteRegistry
from flotilla.scheduler.relay import OutboxRelay
from flotilla.scheduler.service import SchedulerService
from flotilla.scheduler.store import MemoryStore
from flotilla.schemas import (
    AttemptRef,
    DeploymentProvisioned,
    DeploymentReleased,
    Envelope,
    Failure,
    FailureCause,
    Message,
    Progress,
    ProgressReported,
    ProvisionDeployment,
    Provisioned,
    ProvisioningFailed,
    ReleaseDeployment,
)
from flotilla.settings import GatewaySettings
from tests.unit.test_lifecycle import Templates
from tests.unit.test_placement import template, vm
from tests.unit.test_scheduler_service import report_site

SITES = ("alpha", "beta")
GROUPS = ("local", "physics", "chemistry")
AUDIENCE = "flotilla"
WAIT = 10.0
TEMPLATE = "tosca_definitions_version: tosca_simple_yaml_1_3\n# a test template\n"


async def eventually(condition: Callable[[], object], timeout: float = WAIT) -> None:
    """Poll ``condition`` until it is true, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def fast_settings(**overrides: Any) -> GatewaySettings:
    """Gateway settings with short waits, so tests do not idle."""
    values: dict[str, Any] = {
        "create_wait": timedelta(seconds=2),
        "poll_interval": timedelta(milliseconds=20),
        "callback_backoff": timedelta(milliseconds=10),
        "callback_retries": 3,
        "callback_secret": "callback-secret",
        "callback_private_networks": True,  # receivers listen on loopback here
        **overrides,
    }
    return GatewaySettings.model_validate(values)


@dataclass
class Rig:
    """A scheduler and a gateway on one memory broker; the test plays the sites."""

    broker: MemoryBroker
    store: MemoryStore
    registry: SiteRegistry
    gateway: Gateway
    client: TestClient[web.Request, web.Application]
    site_buses: dict[str, MemoryBus]
    commands: dict[str, asyncio.Queue[Message]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return str(self.client.make_url("")).rstrip("/")

    async def command(self, site: str) -> Message:
        """The next command the scheduler sent to ``site``."""
        async with asyncio.timeout(WAIT):
            return await self.commands[site].get()

    async def provision(self, site: str) -> ProvisionDeployment:
        """The next command to ``site``, which must be a provision."""
        command = await self.command(site)
        assert isinstance(command, ProvisionDeployment), command
        return command

    async def report(self, site: str, message: Envelope) -> None:
        """Publish a report as the site's agent."""
        await self.site_buses[site].publish(message, route(message))

    async def progress(self, command: ProvisionDeployment, phase: str, text: str) -> None:
        """The site reports progress of the commanded attempt."""
        data = Progress(
            deployment_id=command.data.deployment_id,
            site=command.data.site,
            attempt=command.data.attempt,
            phase=phase,
            message=text,
        )
        await self.report(command.data.site, ProgressReported.create(data, source="/sites/t"))

    async def succeed(self, command: ProvisionDeployment, **outputs: Any) -> None:
        """The site reports the commanded attempt provisioned."""
        data = Provisioned(
            deployment_id=command.data.deployment_id,
            site=command.data.site,
            attempt=command.data.attempt,
            outputs=outputs,
        )
        await self.report(command.data.site, DeploymentProvisioned.create(data, source="/sites/t"))

    async def fail(self, command: ProvisionDeployment, code: str, text: str) -> None:
        """The site reports the commanded attempt failed."""
        data = Failure(
            deployment_id=command.data.deployment_id,
            site=command.data.site,
            attempt=command.data.attempt,
            cause=FailureCause(code=code, message=text, retryable=False),
        )
        await self.report(command.data.site, ProvisioningFailed.create(data, source="/sites/t"))

    async def release(self, site: str) -> None:
        """Take the next command to ``site`` (a release) and report it done."""
        command = await self.command(site)
        assert isinstance(command, ReleaseDeployment), command
        data = AttemptRef(
            deployment_id=command.data.deployment_id, site=site, attempt=command.data.attempt
        )
        await self.report(site, DeploymentReleased.create(data, source="/sites/t"))


@dataclass
class Issuer:
    """A local OIDC issuer: its key pair, and the URL serving its metadata and JWKS."""

    url: str
    key: rsa.RSAPrivateKey
    kid: str
    fetches: list[str] = field(default_factory=list)  # paths of JWKS fetches served

    def token(
        self,
        subject: str,
        groups: list[str] | None = None,
        *,
        lifetime: float = 300.0,
        audience: str = AUDIENCE,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token (by default valid, for the gateway's audience)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": subject,
            "iss": self.url,
            "aud": audience,
            "iat": now,
            "exp": now + int(lifetime),
            **claims,
        }
        if groups is not None:
            payload["groups"] = groups
        return jwt.encode(
            payload, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid}
        )

    def header(
        self, subject: str, groups: list[str] | None = None, **kwargs: Any
    ) -> dict[str, str]:
        """An Authorization header with a token of ``subject``."""
        return {"Authorization": f"Bearer {self.token(subject, groups, **kwargs)}"}


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    """The issuer's RSA key (generated once: it takes a moment)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    """A key the issuer never published: tokens signed with it are forged."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def issuer(signing_key: rsa.RSAPrivateKey) -> AsyncIterator[Issuer]:
    """A local issuer serving discovery metadata and its JWKS on loopback."""
    kid = uuid.uuid4().hex[:8]
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    app = web.Application()
    server = TestServer(app)
    base = ""
    fetches: list[str] = []

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"issuer": base, "jwks_uri": f"{base}/jwks.json"})

    async def jwks(request: web.Request) -> web.Response:
        fetches.append(request.path)
        return web.json_response({"keys": [jwk]})

    app.router.add_get("/.well-known/openid-configuration", metadata)
    app.router.add_get("/jwks.json", jwks)
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        yield Issuer(url=base, key=signing_key, kid=kid, fetches=fetches)
    finally:
        await server.close()


async def start_rig(
    auth: Authenticator | None, settings: GatewaySettings
) -> tuple[Rig, Callable[[], Any]]:
    """Start a scheduler and a gateway; returns the rig and its async stopper."""
    broker = MemoryBroker()
    scheduler_bus = MemoryBus(policy=DELIVERY_POLICY, broker=broker, user="flotilla-scheduler")
    gateway_bus = MemoryBus(policy=DELIVERY_POLICY, broker=broker, user="flotilla-gateway")
    site_buses = {
        s: MemoryBus(policy=DELIVERY_POLICY, broker=broker, user=site_user(s)) for s in SITES
    }
    for bus in (scheduler_bus, gateway_bus, *site_buses.values()):
        await bus.__aenter__()
    await scheduler_bus.declare(core_topology())
    await scheduler_bus.declare(mirror_topology("test.events"))  # public events need a queue
    commands: dict[str, asyncio.Queue[Message]] = {s: asyncio.Queue() for s in SITES}
    for site in SITES:
        await scheduler_bus.declare(site_topology(site))

        async def take(message: Message, delivery: Delivery, site: str = site) -> None:
            commands[site].put_nowait(message)

        await site_buses[site].subscribe(site_commands_queue(site), take)
    store = MemoryStore()
    registry = SiteRegistry(grace=timedelta(0))
    slas = [Sla(id=f"sla-{s}-{g}", group=g, site=s) for s in SITES for g in GROUPS]
    placer = Placer(registry, slas)
    templates = Templates(template(vm()))
    service = SchedulerService(
        bus=scheduler_bus,
        store=store,
        lifecycle=Lifecycle(store=store, placer=placer, templates=templates),
        placer=placer,
        relay=OutboxRelay(store, scheduler_bus),
    )
    task = asyncio.create_task(service.run())
    await report_site(site_buses["alpha"], "alpha", cores=100)
    await report_site(site_buses["beta"], "beta", cores=50)
    await eventually(lambda: all(registry.get(s) and registry.get(s).capacity for s in SITES))
    gateway = Gateway(store, gateway_bus, templates, registry, auth, settings)
    client = TestClient(TestServer(gateway.build_app()))
    await client.start_server()
    rig = Rig(broker, store, registry, gateway, client, site_buses, commands)

    async def stop() -> None:
        await client.close()
        await service.shutdown()
        await task
        for bus in (gateway_bus, *site_buses.values(), scheduler_bus):
            await bus.close()

    return rig, stop


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A federation behind a gateway with authentication off (the embedded mode)."""
    started, stop = await start_rig(None, fast_settings(auth=False))
    try:
        yield started
    finally:
        await stop()


@pytest.fixture
async def secured(issuer: Issuer) -> AsyncIterator[Rig]:
    """A federation behind a gateway that checks tokens of the local issuer."""
    async with OidcAuthenticator(issuer=issuer.url, audience=AUDIENCE) as auth:
        started, stop = await start_rig(auth, fast_settings())
        try:
            yield started
        finally:
            await stop()
