"""``flotilla broker``: declare the topology and manage per-site broker users."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from pydantic import SecretStr
from rich.table import Table

from flotilla.broker.admin import (
    Credentials,
    ManagementClient,
    add_scheduler_user,
    add_site,
    remove_site,
)
from flotilla.broker.topology import DELIVERY_POLICY, core_topology
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.cli.app import app, err, load_settings
from flotilla.settings import Settings

broker_app = typer.Typer(
    name="broker",
    help="Administer RabbitMQ: declare the topology, add and remove sites.",
    no_args_is_help=True,
)
app.add_typer(broker_app, name="broker")

AgentUrl = Annotated[
    str | None,
    typer.Option(
        "--agent-url",
        help="AMQP URL as agents reach the broker (credentials replaced); default: bus URL.",
        show_default=False,
    ),
]


@broker_app.callback()
def _load_settings(ctx: typer.Context) -> None:
    """Administer RabbitMQ: declare the topology, add and remove sites."""
    # Logs go to stderr, so stdout stays clean for ``add-site ... > agent.env``.
    ctx.obj = load_settings()


@broker_app.command("init")
def init(
    ctx: typer.Context,
    with_users: Annotated[
        bool, typer.Option("--with-users", help="Also create the scheduler's broker user.")
    ] = False,
    agent_url: AgentUrl = None,
) -> None:
    """Declare the core exchanges and queues (safe to repeat)."""
    settings: Settings = ctx.obj
    asyncio.run(_declare_core(settings))
    err.print("[green]declared[/] the core topology")
    if with_users:
        credentials = asyncio.run(_add_scheduler(settings, _url(settings, agent_url)))
        _print_credentials(credentials, title="scheduler")


@broker_app.command("add-site")
def add_site_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name, as in routing keys.")],
    agent_url: AgentUrl = None,
) -> None:
    """Create a site's broker user and queue; prints the agent's settings on stdout.

    Running it again for an existing site gives the user a new password.
    """
    settings: Settings = ctx.obj
    credentials = asyncio.run(_add_site(settings, name, _url(settings, agent_url)))
    _print_credentials(credentials, title=f"site {name}")


@broker_app.command("remove-site")
def remove_site_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name.")],
    keep_queue: Annotated[
        bool, typer.Option("--keep-queue", help="Keep the command queue and its messages.")
    ] = False,
) -> None:
    """Delete a site's broker user and (unless --keep-queue) its command queue."""
    settings: Settings = ctx.obj
    existed = asyncio.run(_remove_site(settings, name, keep_queue=keep_queue))
    what = "removed" if existed else "no user for"
    err.print(f"[green]{what}[/] site {name}" + (" (queue kept)" if keep_queue else ""))


async def _declare_core(settings: Settings) -> None:
    async with _admin_bus(settings) as bus:
        await bus.declare(core_topology())


async def _add_scheduler(settings: Settings, bus_url: SecretStr) -> Credentials:
    async with ManagementClient(settings.management) as client:
        return await add_scheduler_user(client=client, bus_url=bus_url)


async def _add_site(settings: Settings, site: str, bus_url: SecretStr) -> Credentials:
    async with ManagementClient(settings.management) as client, _admin_bus(settings) as bus:
        return await add_site(site, client=client, bus=bus, bus_url=bus_url)


async def _remove_site(settings: Settings, site: str, *, keep_queue: bool) -> bool:
    async with ManagementClient(settings.management) as client:
        return await remove_site(site, client=client, keep_queue=keep_queue)


def _admin_bus(settings: Settings) -> RabbitBus:
    return RabbitBus(url=settings.bus.url.get_secret_value(), policy=DELIVERY_POLICY)


def _url(settings: Settings, override: str | None) -> SecretStr:
    return SecretStr(override) if override else settings.bus.url


def _print_credentials(credentials: Credentials, *, title: str) -> None:
    """Environment lines on stdout (to redirect into a file), a summary on stderr."""
    for key, value in credentials.env().items():
        typer.echo(f"{key}={value}")
    table = Table(title=f"Broker login for {title}", show_header=False)
    table.add_row("user", credentials.user)
    table.add_row("password", "(in FLOTILLA_BUS__URL on stdout; shown once)")
    if credentials.queue:
        table.add_row("queue", credentials.queue)
    err.print(table)
    if credentials.rotated:
        err.print(
            f"[yellow]rotated:[/] {credentials.user} existed and has a new password; "
            "connections already open keep working, new ones need the new URL."
        )
