"""RabbitMQ topology as code and per-site credential provisioning."""

from flotilla.broker.topology import (
    COMMANDS,
    DEAD_LETTER,
    DELIVERY_POLICY,
    EVENTS,
    REPORTS,
    REQUESTS,
    SCHEDULER_HEARTBEATS,
    SCHEDULER_REPORTS,
    SCHEDULER_REQUESTS,
    SCHEDULER_USER,
    core_topology,
    route,
    site_commands_queue,
    site_topology,
    site_user,
)

__all__ = [
    "COMMANDS",
    "DEAD_LETTER",
    "DELIVERY_POLICY",
    "EVENTS",
    "REPORTS",
    "REQUESTS",
    "SCHEDULER_HEARTBEATS",
    "SCHEDULER_REPORTS",
    "SCHEDULER_REQUESTS",
    "SCHEDULER_USER",
    "core_topology",
    "route",
    "site_commands_queue",
    "site_topology",
    "site_user",
]
