"""``flotilla deploy | status | list | delete | events | sites``: talk to a gateway.

The gateway's address and token come from ``--url`` / ``--token`` or ``FLOTILLA_URL`` /
``FLOTILLA_TOKEN``. Exit status: 0 done, 1 refused or the deployment failed, 2 the gateway
could not be reached.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from flotilla.cli.app import app
from flotilla.cli.options import InputsOption, parse_inputs
from flotilla.client import DELETED, FINAL, Event, FlotillaClient

out = Console(soft_wrap=True)

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="FLOTILLA_URL", help="Gateway base URL."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="FLOTILLA_TOKEN", help="OIDC bearer token.", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DEFAULT_URL = "http://127.0.0.1:8080"
_T = TypeVar("_T")


def _run(url: str, token: str | None, work: Callable[[FlotillaClient], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        async with FlotillaClient(url, token=token) as client:
            return await work(client)

    return asyncio.run(main())


@app.command()
def deploy(
    template: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="TOSCA YAML template."),
    ],
    input_: InputsOption = None,
    site: Annotated[str | None, typer.Option(help="Pin the deployment to this site.")] = None,
    group: Annotated[str | None, typer.Option(help="Tenant group (default: your first).")] = None,
    max_sites: Annotated[int | None, typer.Option(help="Sites to try at most.")] = None,
    timeout_minutes: Annotated[int | None, typer.Option(help="Overall deadline.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow progress until a final status.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask for a deployment of TEMPLATE; with --wait, show its progress until it ends."""
    text = template.read_text(encoding="utf-8")
    inputs = parse_inputs(input_)

    async def work(client: FlotillaClient) -> dict[str, Any]:
        created = await client.create(
            text,
            inputs=inputs,
            site=site,
            group=group,
            max_sites=max_sites,
            timeout_minutes=timeout_minutes,
        )
        if not as_json:
            out.print(f"deployment [bold]{created['id']}[/] {created['status']}", highlight=False)
        if not wait:
            return created
        return await follow(client, created["id"], quiet=as_json)

    view = _run(url, token, work)
    if as_json:
        out.print_json(data=view)
    elif wait:
        print_view(view)
    if wait and view["status"] != "CREATE_COMPLETE":
        raise typer.Exit(code=1)


async def follow(
    client: FlotillaClient,
    deployment_id: str,
    *,
    until: Collection[str] = FINAL,
    quiet: bool = False,
) -> dict[str, Any]:
    """Show a deployment's events live until a final status; return the final view."""
    spinner = Spinner("dots", text="waiting for the scheduler")
    with Live(spinner, console=out, transient=True) as live:
        async for event in client.events(deployment_id, until=until):
            line = _event_line(event)
            if line is None or quiet:
                continue
            if event.type.endswith("progress_reported"):
                spinner.update(text=line)
            else:
                live.console.print(line)
                spinner.update(text=Text(f"{event.data.get('status', '')} ..."))
    return await client.get(deployment_id)


def _event_line(event: Event) -> Text | None:
    data = event.data
    site, attempt = data.get("site"), data.get("attempt")
    where = f"{site}#{attempt}" if site and attempt else site or ""
    kind = event.type.rsplit(".", 1)[-1]
    if kind == "status_changed":
        reason = f": {data['reason']}" if data.get("reason") else ""
        style = (
            "green"
            if data["status"].endswith("COMPLETE")
            else "red"
            if "FAILED" in data["status"]
            else "cyan"
        )
        return Text.assemble((data["status"], style), f" {where}{reason}")
    if kind == "progress_reported":
        message = f" {data['message']}" if data.get("message") else ""
        return Text(f"{where} {data.get('phase', '')}{message}")
    if kind == "provisioning_failed":
        cause = data.get("cause", {})
        return Text.assemble(
            ("attempt failed", "yellow"), f" {where}: {cause.get('code')}: {cause.get('message')}"
        )
    if kind == "provisioned":
        return Text.assemble(("provisioned", "green"), f" {where}")
    if kind == "released":
        return Text(f"released {where}")
    return None


@app.command()
def status(
    deployment_id: Annotated[str, typer.Argument(help="Deployment id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    why: Annotated[
        bool, typer.Option("--why", help="Also show why each attempt went to its site.")
    ] = False,
) -> None:
    """Show a deployment: status, outputs and every attempt with its cause."""
    view = _run(url, token, lambda client: client.get(deployment_id))
    if as_json:
        out.print_json(data=view)
    else:
        print_view(view, why=why)


@app.command("list")
def list_(
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    owner: Annotated[str | None, typer.Option(help="Only this owner.")] = None,
    status_: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List deployments you can see, newest first."""
    page = _run(
        url,
        token,
        lambda client: client.list(
            group=group, owner=owner, status=status_, limit=limit, offset=offset
        ),
    )
    if as_json:
        out.print_json(data=page)
        return
    table = Table("id", "status", "site", "group", "owner", "updated")
    for item in page["items"]:
        table.add_row(
            item["id"],
            _status_text(item["status"]),
            item.get("site") or "-",
            Text(item["group"]),  # Text: names from tokens are shown as is, never as markup
            Text(item["owner"]),
            _age(item.get("updated_at")),
        )
    out.print(table)
    out.print(f"{len(page['items'])} of {page['total']}", highlight=False)


@app.command()
def delete(
    deployment_id: Annotated[str, typer.Argument(help="Deployment id.")],
    force: Annotated[bool, typer.Option(help="Release even what cannot be cleaned up.")] = False,
    wait: Annotated[bool, typer.Option(help="Follow until deleted.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete a deployment: cancel work in flight and release it everywhere."""

    async def work(client: FlotillaClient) -> dict[str, Any]:
        view = await client.delete(deployment_id, force=force)
        out.print(f"deployment [bold]{deployment_id}[/] {view['status']}", highlight=False)
        return await follow(client, deployment_id, until=DELETED) if wait else view

    view = _run(url, token, work)
    if wait:
        print_view(view)
        if view["status"] != "DELETE_COMPLETE":
            raise typer.Exit(code=1)


@app.command()
def events(
    deployment_id: Annotated[str, typer.Argument(help="Deployment id.")],
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming.")] = False,
    after: Annotated[int | None, typer.Option(help="Start after this event id.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a deployment's events in order (JSON lines with --json)."""

    async def work(client: FlotillaClient) -> None:
        stream = client.events(deployment_id, after=after, until=() if follow_ else FINAL)
        async for event in stream:
            if as_json:
                out.print(json.dumps(event.message), soft_wrap=True, highlight=False, markup=False)
                continue
            line = _event_line(event)
            if line is not None:
                out.print(Text(f"{event.id:>6} ") + line)

    _run(url, token, work)


@app.command()
def sites(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The federation's sites: state, lease age, capacity and quota use."""
    listing = _run(url, token, lambda client: client.sites())
    if as_json:
        out.print_json(data=listing)
        return
    table = Table("site", "kind", "state", "lease age", "shapes", "quota use")
    for item in listing["items"]:
        shapes = (item.get("capabilities") or {}).get("shapes") or []
        quotas = ", ".join(_quota(q) for q in item.get("quotas") or [])
        age = item.get("lease_age_seconds")
        state = item.get("state", "?") if item.get("fresh", True) else "stale"
        table.add_row(
            item["site"],
            item.get("kind", "?"),
            _status_text(state.upper()),
            "-" if age is None else f"{age:.0f}s",
            ", ".join(s["name"] for s in shapes[:4]) + (" ..." if len(shapes) > 4 else ""),
            quotas or "-",
        )
    out.print(table)


def _quota(quota: dict[str, Any]) -> str:
    used = f"{quota.get('used', 0):g}"
    limit = quota.get("limit")
    return f"{quota['resource']} {used}/{'-' if limit is None else f'{limit:g}'}"


def print_view(view: dict[str, Any], *, why: bool = False) -> None:
    out.print(
        Text.assemble(("deployment ", ""), (view["id"], "bold"), " ", _status_text(view["status"]))
    )
    if view.get("status_reason"):
        out.print(f"  reason: {view['status_reason']}", highlight=False, markup=False)
    for attempt in view.get("attempts", []):
        cause = f" {attempt['cause_code']}: {attempt['cause']}" if attempt.get("cause") else ""
        out.print(
            f"  attempt {attempt['number']} at {attempt['site']}: {attempt['outcome']}{cause}",
            highlight=False,
            markup=False,
        )
        if why and attempt.get("placement"):
            _print_placement(attempt["placement"])
    for name, value in (view.get("outputs") or {}).items():
        out.print(f"  output {name} = {json.dumps(value)}", highlight=False, markup=False)


def _print_placement(placement: dict[str, Any]) -> None:
    """The ranking an attempt was placed by: candidates best first, then rejected sites."""
    # Reasons carry text from requests (regions, image names): printed as is, not as markup.
    for candidate in placement["candidates"]:
        terms = ", ".join(candidate["explanation"])
        line = f"    {candidate['site']}: {candidate['score']:g} ({terms})"
        out.print(line, highlight=False, markup=False)
    if placement.get("more_candidates"):
        out.print(f"    ... {placement['more_candidates']} more candidates", highlight=False)
    for rejection in placement["rejected"]:
        reasons = "; ".join(rejection["reasons"])
        out.print(f"    {rejection['site']}: rejected: {reasons}", highlight=False, markup=False)


def _status_text(status: str) -> Text:
    if status in FINAL or status == "READY":
        style = "red" if "FAILED" in status else "green"
    elif status in {"DOWN", "STALE"} or "FAILED" in status:
        style = "red"
    else:
        style = "cyan"
    return Text(status, style=style)


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
