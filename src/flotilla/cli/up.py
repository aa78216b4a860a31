"""``flotilla up``: the whole federation in one process, with local sites.

Gateway, scheduler and two local-site agents run together on the in-memory bus and SQLite
(or on RabbitMQ with ``--bus``), through the same code paths as separate processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr

from flotilla import runtime
from flotilla.cli.app import app, err, load_settings
from flotilla.cli.options import InputsOption, parse_inputs
from flotilla.log import configure_logging
from flotilla.settings import Settings


@app.command()
def up(
    bus: Annotated[
        str | None,
        typer.Option(help="AMQP URL of RabbitMQ; the in-memory bus when not given."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Database URL; SQLite in the state directory when not given."),
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="Where the database, agent inboxes and job output go.")
    ] = Path(".flotilla"),
    host: Annotated[str, typer.Option(help="Gateway address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    sites: Annotated[int, typer.Option(min=1, max=16, help="Local sites to run.")] = 2,
    deploy: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Deploy this template once up, showing progress."
        ),
    ] = None,
    input_: InputsOption = None,
    exit_after: Annotated[
        bool, typer.Option("--exit", help="Stop once the --deploy deployment has ended.")
    ] = False,
) -> None:
    """Run gateway, scheduler and local sites in one process until Ctrl-C.

    Authentication is off: this is the embedded mode for a workstation or a demo.
    """
    settings = load_settings()
    if "FLOTILLA_LOG__LEVEL" not in os.environ:
        # The live display is the output here; logs only when something goes wrong.
        configure_logging(settings.log.model_copy(update={"level": "warning"}))
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    url = store or f"sqlite+aiosqlite:///{state_dir / 'flotilla.db'}"
    settings = settings.model_copy(
        update={
            "scheduler": settings.scheduler.model_copy(update={"store_url": SecretStr(url)}),
            # A workstation: callbacks to a receiver on this machine are the common case.
            "gateway": settings.gateway.model_copy(update={"callback_private_networks": True}),
        }
    )
    inputs = parse_inputs(input_)
    text = deploy.read_text(encoding="utf-8") if deploy is not None else None
    code = runtime.run(
        _up(settings, bus, state_dir, host, port, sites, text, inputs, exit_after),
        loop=settings.event_loop,
    )
    raise typer.Exit(code=code)


async def _up(
    settings: Settings,
    bus_url: str | None,
    state_dir: Path,
    host: str,
    port: int,
    count: int,
    text: str | None,
    inputs: dict[str, str],
    exit_after: bool,
) -> int:
    from flotilla.agents.config import AgentConfig
    from flotilla.cli.deployments import follow, out, print_view
    from flotilla.client import FlotillaClient
    from flotilla.stack import Stack, embedded_slas, memory_buses, rabbit_buses

    configs = [
        AgentConfig.model_validate(
            {
                "site": f"local-{n}",
                "kind": "local",
                "state_dir": str(state_dir / "sites" / f"local-{n}"),
                "lease_interval": 2,
                "capacity_interval": 30,
            }
        )
        for n in range(1, count + 1)
    ]
    buses = rabbit_buses(settings, bus_url) if bus_url else memory_buses()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Stack(
        settings,
        buses=buses,
        sites=configs,
        slas=embedded_slas([c.site for c in configs]),
        # One broker login for every part on RabbitMQ: sender checks cannot tell them apart.
        verify_senders=bus_url is None,
        auth=None,
        host=host,
        port=port,
    ) as stack:
        await stack.wait_for_sites([c.site for c in configs])
        where = "RabbitMQ" if bus_url else "the in-memory bus"
        out.print(
            f"Flotilla is up at [bold]{stack.url}[/] on {where} with sites "
            f"{', '.join(c.site for c in configs)} (authentication off)",
            highlight=False,
        )
        code = 0
        if text is not None:
            async with FlotillaClient(stack.url) as client:
                created = await client.create(text, inputs=inputs)
                out.print(
                    f"deployment [bold]{created['id']}[/] {created['status']}", highlight=False
                )
                view = await follow(client, created["id"])
                print_view(view)
                code = 0 if view["status"] == "CREATE_COMPLETE" else 1
        if exit_after:
            return code
        out.print(
            f"try: flotilla deploy examples/hello-batch.yaml --wait --url {stack.url}"
            " (Ctrl-C stops)",
            highlight=False,
        )
        await stop.wait()
        err.print("stopping")
    return 0
