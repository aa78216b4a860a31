"""The bus contract: the same observable behaviour from ``MemoryBus`` and ``RabbitBus``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flotilla.bus import Delivery, MemoryIdempotencyStore, Route, idempotent
from flotilla.bus.dispatch import REASON_HEADER, RETRIES_HEADER
from flotilla.errors import BusClosedError, PermanentError, RetryableError, UnroutableMessageError
from flotilla.schemas import Message, encode

from .conftest import USER, Harness, Recorder, make_message

pytestmark = pytest.mark.timeout(30)


def work_route(harness: Harness, key: str = "work.a") -> Route:
    """The route to the test's work queue."""
    return Route(exchange=harness.names.exchange, routing_key=key)


async def test_published_message_is_received_decoded(harness: Harness) -> None:
    """A published message reaches the handler decoded, with its id and the sender's user."""
    recorder = Recorder()
    await harness.bus.subscribe(harness.names.work, recorder.handler)
    sent = make_message()

    await harness.bus.publish(sent, work_route(harness))

    [delivery] = await recorder.wait_for(sent.id)
    [(received, _)] = recorder.seen
    assert received == sent
    assert delivery.message_id == sent.id
    assert delivery.user_id == USER
    assert delivery.retries == 0
    assert not delivery.redelivered


async def test_topic_routing_selects_queues(harness: Harness) -> None:
    """Routing keys reach only the queues whose binding pattern matches."""
    work, other = Recorder(), Recorder()
    await harness.bus.subscribe(harness.names.work, work.handler, prefetch=1)
    await harness.bus.subscribe(harness.names.other, other.handler, prefetch=1)
    to_work, to_other = make_message(), make_message()

    await harness.bus.publish(to_work, work_route(harness, "work.a"))
    await harness.bus.publish(to_other, work_route(harness, "other.x.y"))

    await work.wait_for(to_work.id)
    await other.wait_for(to_other.id)
    assert [d.message_id for d in work.deliveries()] == [to_work.id]
    assert [d.message_id for d in other.deliveries()] == [to_other.id]


async def test_unroutable_publish_raises(harness: Harness) -> None:
    """A routing key no queue is bound for raises UnroutableMessageError."""
    with pytest.raises(UnroutableMessageError):
        await harness.bus.publish(make_message(), work_route(harness, "nobody.listens"))


async def test_permanent_error_dead_letters_and_queue_keeps_flowing(harness: Harness) -> None:
    """A permanent failure goes to the dead-letter queue with its reason; later ones still run."""
    handled, dead = Recorder(), Recorder()
    bad, good = make_message("permanent"), make_message("fine")

    async def handler(message: Message, delivery: Delivery) -> None:
        if message.id == bad.id:
            raise PermanentError("quota exceeded at site x")
        await handled.record(message, delivery)

    await harness.bus.subscribe(harness.names.work, handler, prefetch=1)
    await harness.bus.subscribe_raw(harness.names.dead_queue, dead.raw_handler)

    await harness.bus.publish(bad, work_route(harness))
    await harness.bus.publish(good, work_route(harness))

    [dead_letter] = await dead.wait_for(bad.id)
    await handled.wait_for(good.id)
    assert dead_letter.headers[REASON_HEADER] == "quota exceeded at site x"
    assert dead_letter.routing_key == harness.names.work
    assert handled.deliveries(bad.id) == []


async def test_retryable_error_is_retried_with_delay_then_dead_lettered(harness: Harness) -> None:
    """A retryable failure comes back after the delay with retries counted, then dead-letters."""
    attempts, dead = Recorder(), Recorder()
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def handler(message: Message, delivery: Delivery) -> None:
        times.append(loop.time())
        await attempts.record(message, delivery)
        raise RetryableError("site unreachable")

    await harness.bus.subscribe(harness.names.work, handler)
    await harness.bus.subscribe_raw(harness.names.dead_queue, dead.raw_handler)
    sent = make_message()

    await harness.bus.publish(sent, work_route(harness))

    [dead_letter] = await dead.wait_for(sent.id)
    deliveries = attempts.deliveries(sent.id)
    assert [d.retries for d in deliveries] == [0, 1, 2]
    assert [d.headers.get(RETRIES_HEADER, 0) for d in deliveries] == [0, 1, 2]
    assert times[1] - times[0] >= 0.15
    assert times[2] - times[1] >= 0.4
    assert "gave up after 2 retries" in dead_letter.headers[REASON_HEADER]
    assert "site unreachable" in dead_letter.headers[REASON_HEADER]


async def test_retry_then_success_is_handled_once(harness: Harness) -> None:
    """A delivery that fails once and then succeeds is not dead-lettered."""
    handled = Recorder()
    failed: set[str] = set()

    async def handler(message: Message, delivery: Delivery) -> None:
        if message.id not in failed:
            failed.add(message.id)
            raise RetryableError("try again")
        await handled.record(message, delivery)

    await harness.bus.subscribe(harness.names.work, handler)
    sent = make_message()

    await harness.bus.publish(sent, work_route(harness))

    [delivery] = await handled.wait_for(sent.id)
    assert delivery.retries == 1


def _malformed(case: str) -> bytes:
    raw: dict[str, Any] = json.loads(encode(make_message()))
    if case == "bad_json":
        return b"{not json"
    if case == "unknown_type":
        raw["type"] = "flotilla.no_such_type"
    elif case == "missing_field":
        del raw["source"]
    elif case == "unknown_field":
        raw["bogus"] = 1
    elif case == "newer_schema":
        raw["schemaversion"] = 99
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad_json", "Invalid JSON"),
        ("unknown_type", "flotilla.no_such_type"),
        ("missing_field", "source: Field required"),
        ("unknown_field", "bogus: Extra inputs are not permitted"),
        ("newer_schema", "schemaversion 99 is newer"),
    ],
)
async def test_malformed_payload_is_dead_lettered(harness: Harness, case: str, reason: str) -> None:
    """A malformed payload is dead-lettered with a reason naming the problem; consuming goes on."""
    handled, dead = Recorder(), Recorder()
    await harness.bus.subscribe(harness.names.work, handled.handler, prefetch=1)
    await harness.bus.subscribe_raw(harness.names.dead_queue, dead.raw_handler)
    good = make_message()

    await harness.publish_raw("work.a", _malformed(case), "malformed-" + case)
    await harness.bus.publish(good, work_route(harness))

    [dead_letter] = await dead.wait_for("malformed-" + case)
    await handled.wait_for(good.id)
    assert dead_letter.headers[REASON_HEADER].startswith("malformed message: ")
    assert reason in dead_letter.headers[REASON_HEADER]
    assert handled.deliveries("malformed-" + case) == []


async def test_idempotent_middleware_skips_duplicate(harness: Harness) -> None:
    """With the idempotent middleware a second message with the same id is not handled."""
    handled = Recorder()
    store = MemoryIdempotencyStore()
    await harness.bus.subscribe(
        harness.names.work, handled.handler, prefetch=1, middlewares=[idempotent(store)]
    )
    first, after = make_message(), make_message()

    await harness.bus.publish(first, work_route(harness))
    await harness.bus.publish(first, work_route(harness))
    await harness.bus.publish(after, work_route(harness))

    await handled.wait_for(after.id)
    assert len(handled.deliveries(first.id)) == 1


async def test_stop_cancels_in_flight_and_it_is_redelivered(harness: Harness) -> None:
    """A delivery cancelled by stop() is not acknowledged and reaches the next subscriber."""
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(message: Message, delivery: Delivery) -> None:
        started.set()
        await never.wait()

    subscription = await harness.bus.subscribe(harness.names.work, stuck)
    sent = make_message()
    await harness.bus.publish(sent, work_route(harness))
    async with asyncio.timeout(10):
        await started.wait()

    await subscription.stop(timeout=0.1)
    recorder = Recorder()
    await harness.bus.subscribe(harness.names.work, recorder.handler)

    [delivery] = await recorder.wait_for(sent.id)
    assert delivery.redelivered


async def test_closed_bus_refuses_use(harness: Harness) -> None:
    """After close() publishing and subscribing raise BusClosedError."""
    await harness.bus.close()

    with pytest.raises(BusClosedError):
        await harness.bus.publish(make_message(), work_route(harness))
    with pytest.raises(BusClosedError):
        await harness.bus.subscribe(harness.names.work, Recorder().handler)


async def test_close_is_idempotent_and_safe_before_open(harness: Harness) -> None:
    """close() may be called twice, and on a bus that was never opened."""
    await harness.bus.close()
    await harness.bus.close()
    unopened = harness.make_bus()
    await unopened.close()
    await unopened.close()

    with pytest.raises(BusClosedError):
        await unopened.publish(make_message(), work_route(harness))


async def test_a_slow_delivery_does_not_hold_back_the_others(harness: Harness) -> None:
    """While one delivery is still being handled, the ones after it are handled and settled:
    with a prefetch of 2, five later messages all get through, and when the subscription
    stops only the unfinished one is delivered again."""
    first = make_message("slow")
    never = asyncio.Event()
    handled = Recorder()

    async def handler(message: Message, delivery: Delivery) -> None:
        if message.id == first.id:
            await never.wait()
        await handled.record(message, delivery)

    subscription = await harness.bus.subscribe(harness.names.work, handler, prefetch=2)
    await harness.bus.publish(first, work_route(harness))
    later = [make_message(f"later {n}") for n in range(5)]
    for message in later:
        await harness.bus.publish(message, work_route(harness))
    for message in later:
        await handled.wait_for(message.id)
    await subscription.stop(timeout=0.1)

    after = Recorder()
    await harness.bus.subscribe(harness.names.work, after.handler)
    sentinel = make_message("sentinel")
    await harness.bus.publish(sentinel, work_route(harness))
    await after.wait_for(sentinel.id)
    assert [d.message_id for d in after.deliveries()] == [first.id, sentinel.id]


async def test_deliveries_finishing_out_of_order_are_all_settled(harness: Harness) -> None:
    """Forty deliveries that finish in shuffled order are each acknowledged once: after a
    new subscriber takes over, only a message sent afterwards arrives."""
    sent = [make_message(f"m{n}") for n in range(40)]
    delays = {m.id: (n * 7 % 11) / 1000 for n, m in enumerate(sent)}
    handled = Recorder()

    async def handler(message: Message, delivery: Delivery) -> None:
        await asyncio.sleep(delays[message.id])
        await handled.record(message, delivery)

    subscription = await harness.bus.subscribe(harness.names.work, handler, prefetch=16)
    for message in sent:
        await harness.bus.publish(message, work_route(harness))
    for message in sent:
        await handled.wait_for(message.id)
    await subscription.stop()

    after = Recorder()
    await harness.bus.subscribe(harness.names.work, after.handler)
    sentinel = make_message("sentinel")
    await harness.bus.publish(sentinel, work_route(harness))
    await after.wait_for(sentinel.id)
    assert [d.message_id for d in after.deliveries()] == [sentinel.id]
