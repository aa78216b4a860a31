"""The RabbitMQ bus's batched acknowledgements, against a broker's rules for delivery tags.

aiormq hands frames to its writer through a small buffer that, when full, lets a later
frame overtake one waiting for room. The fake deliveries here stand in for that: an ack's
write takes as long as the test says, and the fake channel checks each ack as the broker
would when it arrives, closing the channel over a tag that is no longer outstanding.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from flotilla.bus.rabbitmq import _Acks


class FakeChannel:
    """Outstanding delivery tags, acknowledged by the rules of AMQP 0-9-1.

    ``writes``: how long the ack of each tag takes to reach the broker (default none).
    """

    def __init__(self, tags: int, writes: dict[int, float]) -> None:
        self.outstanding = set(range(1, tags + 1))
        self.writes = writes
        self.written: list[tuple[int, bool]] = []
        self.error: str | None = None
        self.is_closed = False

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        await asyncio.sleep(self.writes.get(delivery_tag, 0.0))
        self.written.append((delivery_tag, multiple))
        if delivery_tag not in self.outstanding:
            self.error = self.error or f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}"
            return
        tags = self.outstanding
        self.outstanding -= {t for t in tags if t <= delivery_tag} if multiple else {delivery_tag}


@dataclass(frozen=True, slots=True)
class FakeDelivery:
    """What ``_Acks`` reads of a delivery: its channel and tag."""

    channel: FakeChannel
    delivery_tag: int


def deliveries(channel: FakeChannel) -> list[Any]:
    return [FakeDelivery(channel, tag) for tag in sorted(channel.outstanding)]


async def pass_of_the_loop() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_acks_reach_the_broker_in_the_order_they_were_sent() -> None:
    # The first batch's ack is slow to be written, the second's is quick.
    channel = FakeChannel(tags=6, writes={3: 0.05})
    messages = deliveries(channel)
    acks = _Acks("q")
    for message in messages:
        acks.started(message)
    for message in messages[:3]:
        acks.ack(message)
    await pass_of_the_loop()  # ack multiple up to 3 is on its way
    for message in messages[3:]:
        acks.ack(message)
    await pass_of_the_loop()  # and up to 6 after it
    await acks.drain()

    assert channel.error is None
    assert channel.written == [(3, True), (6, True)]
    assert channel.outstanding == set()


async def test_acks_behind_a_slow_delivery_do_not_overtake_each_other() -> None:
    channel = FakeChannel(tags=6, writes={4: 0.05})
    messages = deliveries(channel)
    acks = _Acks("q")
    for message in messages:
        acks.started(message)
    # Delivery 2 is still being handled: 1 goes with multiple, 4 and 5 on their own.
    for tag in (1, 4, 5):
        acks.ack(messages[tag - 1])
    await pass_of_the_loop()
    # Then the rest finish: one multiple up to 6, which must not reach the broker before
    # the slow ack of 4 that it covers.
    for tag in (2, 3, 6):
        acks.ack(messages[tag - 1])
    await pass_of_the_loop()
    await acks.drain()

    assert channel.error is None
    assert channel.written == [(1, True), (4, False), (5, False), (6, True)]
    assert channel.outstanding == set()
