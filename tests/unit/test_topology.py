"""Topology: topic matching, routes of every message, and the declared graph."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flotilla.broker import (
    COMMANDS,
    DEAD_LETTER,
    EVENTS,
    REPORTS,
    REQUESTS,
    SCHEDULER_HEARTBEATS,
    SCHEDULER_REPORTS,
    SCHEDULER_REQUESTS,
    core_topology,
    route,
    site_commands_queue,
    site_topology,
)
from flotilla.bus import MemoryBus, topic_matches
from flotilla.bus.memory import MemoryBroker
from flotilla.bus.port import Delivery
from flotilla.schemas import MESSAGE_TYPES, Envelope, type_name
from tests.unit.model_strategies import model_strategy

WORD = st.from_regex(r"[a-z0-9_-]{1,6}", fullmatch=True)


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("site.a.#", "site.a.provision", True),
        ("site.a.#", "site.a", True),
        ("site.a.#", "site.b.provision", False),
        ("site.*.lease", "site.b.lease", True),
        ("site.*.lease", "site.b.c.lease", False),
        ("#", "", True),
        ("deployment.*", "deployment.requested", True),
        ("*.x.#.y", "a.x.b.c.y", True),
    ],
)
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    """Topic patterns follow AMQP: * is one word, # zero or more."""
    assert topic_matches(pattern, key) is expected


@given(words=st.lists(WORD, min_size=1, max_size=5))
def test_hash_matches_any_key_and_exact_pattern_matches_itself(words: list[str]) -> None:
    """'#' matches every key, and a key used as a pattern matches itself."""
    key = ".".join(words)
    assert topic_matches("#", key)
    assert topic_matches(key, key)


def _destination(message: Envelope, broker: MemoryBroker) -> list[str]:
    r = route(message)
    return broker._targets(r.exchange, r.routing_key)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=type_name)
@given(data=st.data())
def test_every_message_reaches_its_consumer(cls: type[Envelope], data: st.DataObject) -> None:
    """Each message type routes to the queue of the component that handles it."""
    message = data.draw(model_strategy(cls))
    broker = MemoryBroker()
    broker.declare(core_topology())
    site = getattr(message.data, "site", None)
    if site:
        broker.declare(site_topology(site))
    r = route(message)
    expected = {
        REQUESTS: SCHEDULER_REQUESTS,
        COMMANDS: site_commands_queue(site or ""),
        EVENTS: None,
    }.get(r.exchange)
    if r.exchange == REPORTS:
        expected = (
            SCHEDULER_HEARTBEATS if message.type.startswith("flotilla.site.") else SCHEDULER_REPORTS
        )
    assert _destination(message, broker) == ([expected] if expected else [])


def test_commands_for_one_site_never_reach_another() -> None:
    """A command routed to site a is not delivered to site b's queue."""
    broker = MemoryBroker()
    broker.declare(core_topology())
    broker.declare(site_topology("a"))
    broker.declare(site_topology("b"))
    delivery = Delivery(body=b"{}", queue="", exchange=COMMANDS, routing_key="site.a.provision")
    assert broker.route(delivery) == 1
    assert broker.depth(site_commands_queue("a")) == 1
    assert broker.depth(site_commands_queue("b")) == 0


def test_expired_heartbeats_are_dropped_not_dead_lettered() -> None:
    """The heartbeat queue has a TTL and no dead-letter exchange."""
    _, queues, _ = core_topology().declarations()
    heartbeats = next(q for q in queues if q.name == SCHEDULER_HEARTBEATS)
    assert heartbeats.message_ttl is not None
    assert heartbeats.dead_letter_exchange is None


def test_declarations_include_dead_letter_and_retry_tiers() -> None:
    """Every work queue dead-letters to the DLX; retry tiers return via the default exchange."""
    exchanges, queues, _ = core_topology().declarations()
    names = {e.name for e in exchanges}
    assert DEAD_LETTER in names
    tiers = [q for q in queues if q.dead_letter_to_default]
    assert [q.message_ttl.total_seconds() for q in tiers if q.message_ttl] == [1.0, 5.0, 30.0]
    work = [q for q in queues if not q.dead_letter_to_default and q.dead_letters]
    work = [q for q in work if q.name != DEAD_LETTER]
    assert work
    assert all(q.dead_letter_exchange == DEAD_LETTER for q in work)


async def test_declaring_twice_is_harmless() -> None:
    """Declaring the same topology again changes nothing."""
    from flotilla.broker import DELIVERY_POLICY

    async with MemoryBus(policy=DELIVERY_POLICY) as bus:
        await bus.declare(core_topology())
        await bus.declare(core_topology())
        assert bus.broker.depth(SCHEDULER_REQUESTS) == 0
        assert len(bus.broker._bindings) == len(set(bus.broker._bindings))
