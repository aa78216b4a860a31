"""Flotilla's broker topology as code, and where each message type is routed.

Exchanges (all topic):
- ``flotilla.requests``: upstream services ask for deployments (``deployment.requested``,
  ``deployment.delete_requested``); the scheduler consumes ``flotilla.scheduler.requests``.
- ``flotilla.commands``: the scheduler's commands to one site, ``site.<site>.provision`` and
  ``site.<site>.release``; each site consumes only ``flotilla.site.<site>.commands``.
- ``flotilla.reports``: a site's reports, ``site.<site>.lease``, ``site.<site>.capacity`` and
  ``site.<site>.deployment.<event>``; the scheduler consumes them.
- ``flotilla.events``: the public lifecycle stream, ``deployment.<event>[.<status>]``, for
  auditing, alerting and the MQTT mirror.
"""

from __future__ import annotations

from datetime import timedelta

from flotilla.bus import (
    Binding,
    DeadLetterPolicy,
    DeliveryPolicy,
    Exchange,
    Queue,
    RetryPolicy,
    Route,
    Topology,
)
from flotilla.schemas import (
    DeploymentDeleteRequested,
    DeploymentProvisioned,
    DeploymentReleased,
    DeploymentRequested,
    DeploymentStatusChanged,
    Envelope,
    ProgressReported,
    ProvisionDeployment,
    ProvisioningFailed,
    ReleaseDeployment,
    ReleaseFailed,
    SiteCapacity,
    SiteLease,
)

REQUESTS = "flotilla.requests"
COMMANDS = "flotilla.commands"
REPORTS = "flotilla.reports"
EVENTS = "flotilla.events"
DEAD_LETTER = "flotilla.dead-letter"
RETRY_PREFIX = "flotilla.retry"

SCHEDULER_REQUESTS = "flotilla.scheduler.requests"
SCHEDULER_REPORTS = "flotilla.scheduler.reports"
SCHEDULER_HEARTBEATS = "flotilla.scheduler.heartbeats"
SCHEDULER_USER = "flotilla-scheduler"
GATEWAY_HEARTBEATS = "flotilla.gateway.heartbeats"

DELIVERY_POLICY = DeliveryPolicy(
    retry=RetryPolicy(prefix=RETRY_PREFIX),
    dead_letter=DeadLetterPolicy(exchange=DEAD_LETTER, queue=DEAD_LETTER),
)

_REPORT_EVENTS: dict[type[Envelope], str] = {
    ProgressReported: "progress_reported",
    DeploymentProvisioned: "provisioned",
    ProvisioningFailed: "provisioning_failed",
    DeploymentReleased: "released",
    ReleaseFailed: "release_failed",
}


def site_commands_queue(site: str) -> str:
    """The queue one site's agent consumes."""
    return f"flotilla.site.{site}.commands"


def site_user(site: str) -> str:
    """The broker login of one site's agent."""
    return f"flotilla-site-{site}"


def site_topology(site: str) -> Topology:
    """The queue and binding of one site (declared by ``broker add-site`` and the agent)."""
    queue = site_commands_queue(site)
    return Topology(
        policy=DELIVERY_POLICY,
        exchanges=(Exchange(name=COMMANDS),),
        queues=(Queue(name=queue),),
        bindings=(Binding(queue=queue, exchange=COMMANDS, pattern=f"site.{site}.#"),),
    )


def core_topology() -> Topology:
    """Exchanges and the scheduler's queues; site queues come with ``site_topology``."""
    return Topology(
        policy=DELIVERY_POLICY,
        exchanges=tuple(Exchange(name=name) for name in (REQUESTS, COMMANDS, REPORTS, EVENTS)),
        queues=(
            Queue(name=SCHEDULER_REQUESTS),
            Queue(name=SCHEDULER_REPORTS),
            # Leases and capacity are latest-wins: an old one is worthless, so it expires
            # and is dropped rather than filling the dead-letter queue.
            Queue(name=SCHEDULER_HEARTBEATS, message_ttl=timedelta(minutes=2), dead_letters=False),
        ),
        bindings=(
            Binding(queue=SCHEDULER_REQUESTS, exchange=REQUESTS, pattern="deployment.*"),
            Binding(queue=SCHEDULER_REPORTS, exchange=REPORTS, pattern="site.*.deployment.#"),
            Binding(queue=SCHEDULER_HEARTBEATS, exchange=REPORTS, pattern="site.*.lease"),
            Binding(queue=SCHEDULER_HEARTBEATS, exchange=REPORTS, pattern="site.*.capacity"),
        ),
    )


def route(message: Envelope) -> Route:
    """The exchange and routing key a message is published with."""
    if isinstance(message, DeploymentRequested):
        return Route(exchange=REQUESTS, routing_key="deployment.requested")
    if isinstance(message, DeploymentDeleteRequested):
        return Route(exchange=REQUESTS, routing_key="deployment.delete_requested")
    if isinstance(message, ProvisionDeployment):
        return Route(exchange=COMMANDS, routing_key=f"site.{message.data.site}.provision")
    if isinstance(message, ReleaseDeployment):
        return Route(exchange=COMMANDS, routing_key=f"site.{message.data.site}.release")
    if isinstance(message, SiteLease):
        return Route(exchange=REPORTS, routing_key=f"site.{message.data.site}.lease")
    if isinstance(message, SiteCapacity):
        return Route(exchange=REPORTS, routing_key=f"site.{message.data.site}.capacity")
    if isinstance(message, DeploymentStatusChanged):
        status = message.data.status.value.lower()
        # Public events: consumers come and go, and no consumer is not an error.
        return Route(
            exchange=EVENTS, routing_key=f"deployment.status_changed.{status}", mandatory=False
        )
    event = _REPORT_EVENTS.get(type(message))
    if event is not None:
        site = message.data.site  # type: ignore[attr-defined]
        return Route(exchange=REPORTS, routing_key=f"site.{site}.deployment.{event}")
    raise TypeError(f"no route for message type {type(message).__name__}")


def gateway_topology(queue: str = GATEWAY_HEARTBEATS) -> Topology:
    """A gateway's queue of site leases and capacity reports, for its ``/v1/sites`` view.

    Like the scheduler's heartbeat queue it is latest-wins: old heartbeats expire and are
    dropped, never dead-lettered, and the queue is bounded so a gateway replica that went
    away does not leave a growing queue behind. Each replica needs its own queue name.
    """
    return Topology(
        policy=DELIVERY_POLICY,
        exchanges=(Exchange(name=REPORTS),),
        queues=(
            Queue(
                name=queue,
                message_ttl=timedelta(minutes=2),
                max_length=10_000,
                dead_letters=False,
            ),
        ),
        bindings=(
            Binding(queue=queue, exchange=REPORTS, pattern="site.*.lease"),
            Binding(queue=queue, exchange=REPORTS, pattern="site.*.capacity"),
        ),
    )


def mirror_topology(queue: str = "flotilla.mqtt-mirror") -> Topology:
    """The MQTT mirror's queue, bound to every routing key of the public event stream."""
    return Topology(
        policy=DELIVERY_POLICY,
        exchanges=(Exchange(name=EVENTS),),
        queues=(Queue(name=queue),),
        bindings=(Binding(queue=queue, exchange=EVENTS, pattern="#"),),
    )
