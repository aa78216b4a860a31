"""Throughput of RabbitBus against bare aio-pika on the same broker, in the same run.

Both sides publish persistent messages with publisher confirms and ``mandatory``, keep the
same number of confirmed publishes in flight, and consume with manual acknowledgement and
the same prefetch, on fresh uuid-named quorum queues declared with the same arguments.
The bare side publishes pre-encoded bytes; Flotilla encodes, decodes and runs its chain, so
the ratio is what the bus costs over the transport.

    python bench/bus.py --count 20000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from baseline import aiormq_defaults
from broker_cleanup import delete_topology
from flotilla.bus import (
    Binding,
    DeadLetterPolicy,
    Delivery,
    DeliveryPolicy,
    Exchange,
    Queue,
    RetryPolicy,
    Route,
    Topology,
)
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.schemas import DeleteRequest, DeploymentDeleteRequested, Message, encode, new_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """Rates of one run, in messages per second."""

    publish: float
    end_to_end: float
    cpu_us: float
    """Client CPU time per message (publish and consume), in microseconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What to run."""

    url: str
    count: int
    prefetch: int
    concurrency: int


def bench_topology() -> Topology:
    """A fresh exchange and queue, with their own retry and dead-letter names."""
    base = f"bench.{uuid.uuid4().hex[:10]}"
    policy = DeliveryPolicy(
        retry=RetryPolicy(prefix=f"{base}.retry"),
        dead_letter=DeadLetterPolicy(exchange=f"{base}.dead", queue=f"{base}.dead"),
    )
    return Topology(
        policy=policy,
        exchanges=(Exchange(name=f"{base}.ex"),),
        queues=(Queue(name=f"{base}.work"),),
        bindings=(Binding(queue=f"{base}.work", exchange=f"{base}.ex", pattern="#"),),
    )


def make_messages(count: int) -> list[DeploymentDeleteRequested]:
    """Distinct messages, built before timing starts."""
    return [
        DeploymentDeleteRequested.create(
            DeleteRequest(deployment_id=new_id(), requested_by="bench"), source="/flotilla/bench"
        )
        for _ in range(count)
    ]


async def publish_bounded(
    count: int, concurrency: int, publish: Callable[[int], Awaitable[None]]
) -> None:
    """Publish ``count`` messages with at most ``concurrency`` unconfirmed at a time."""
    positions = iter(range(count))

    async def worker() -> None:
        for index in positions:
            await publish(index)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


async def timed(
    count: int, concurrency: int, publish: Callable[[int], Awaitable[None]], done: asyncio.Event
) -> Result:
    """Time publishing, then the wait until the consumer has handled everything."""
    start, cpu = time.perf_counter(), time.process_time()
    await publish_bounded(count, concurrency, publish)
    published = time.perf_counter()
    async with asyncio.timeout(300):
        await done.wait()
    finished = time.perf_counter()
    return Result(
        publish=count / (published - start),
        end_to_end=count / (finished - start),
        cpu_us=(time.process_time() - cpu) / count * 1e6,
    )


class Counter:
    """Sets ``done`` once ``count`` deliveries were handled."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.done = asyncio.Event()

    def hit(self) -> None:
        """One more delivery handled."""
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


async def run_flotilla(
    options: Options, topology: Topology, messages: list[DeploymentDeleteRequested]
) -> Result:
    """Publish and consume through RabbitBus."""
    route = Route(exchange=topology.exchanges[0].name, routing_key="bench")
    counter = Counter(options.count)

    async def handler(message: Message, delivery: Delivery) -> None:
        counter.hit()

    async def publish(index: int) -> None:
        await bus.publish(messages[index], route)

    async with RabbitBus(url=options.url, policy=topology.policy, name="bench-flotilla") as bus:
        await bus.declare(topology)
        await bus.subscribe(topology.queues[0].name, handler, prefetch=options.prefetch)
        return await timed(options.count, options.concurrency, publish, counter.done)


async def run_bare(
    options: Options, topology: Topology, messages: list[DeploymentDeleteRequested]
) -> Result:
    """Publish and consume the same bytes with aio-pika alone."""
    bodies = [encode(message) for message in messages]
    counter = Counter(options.count)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        counter.hit()

    with aiormq_defaults():
        connection = await aio_pika.connect_robust(options.url)
    user = connection.url.user
    async with connection:
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=options.prefetch)
        queue = await consumer.get_queue(topology.queues[0].name, ensure=True)
        await queue.consume(on_message)
        exchange = await publisher.get_exchange(topology.exchanges[0].name, ensure=False)

        async def publish(index: int) -> None:
            # The same properties the bus sets, so both sides put identical messages on the
            # wire; user_id is what lets the broker vouch for the sender.
            envelope = messages[index]
            message = aio_pika.Message(
                body=bodies[index],
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=envelope.id,
                type=envelope.type,
                correlation_id=envelope.correlationid,
                timestamp=envelope.time,
                user_id=user,
            )
            await exchange.publish(message, "bench", mandatory=True)

        return await timed(options.count, options.concurrency, publish, counter.done)


async def declare_and_run(options: Options, side: str) -> Result:
    """Run one side on its own fresh topology, declared by the bus, and delete it after."""
    topology = bench_topology()
    messages = make_messages(options.count)
    async with RabbitBus(url=options.url, policy=topology.policy, name="bench-declare") as bus:
        await bus.declare(topology)
    try:
        runner = run_flotilla if side == "flotilla" else run_bare
        return await runner(options, topology, messages)
    finally:
        await delete_topology(options.url, topology)


async def main(options: Options, rounds: int) -> None:
    """Run both sides ``rounds`` times, alternating, and print median rates and the ratios."""
    results: dict[str, list[Result]] = {"bare": [], "flotilla": []}
    for _ in range(rounds):
        for side in ("bare", "flotilla"):
            result = await declare_and_run(options, side)
            results[side].append(result)
            print(f"  {side:9} {describe(result)}")
    print(
        f"count={options.count} prefetch={options.prefetch} "
        f"in-flight publishes={options.concurrency} rounds={rounds} (medians)"
    )
    medians = {side: median_result(runs) for side, runs in results.items()}
    for side, result in medians.items():
        print(f"{side:9} {describe(result)}")
    bare, flotilla = medians["bare"], medians["flotilla"]
    print(
        f"ratio flotilla/bare: publish {flotilla.publish / bare.publish:.2f}   "
        f"end-to-end {flotilla.end_to_end / bare.end_to_end:.2f}"
    )


def describe(result: Result) -> str:
    """One line of rates."""
    return (
        f"publish {result.publish:7.0f} msg/s   end-to-end {result.end_to_end:7.0f} msg/s   "
        f"client cpu {result.cpu_us:5.0f} us/msg"
    )


def median_result(runs: list[Result]) -> Result:
    """The median of each rate over the rounds."""
    return Result(
        publish=statistics.median(r.publish for r in runs),
        end_to_end=statistics.median(r.end_to_end for r in runs),
        cpu_us=statistics.median(r.cpu_us for r in runs),
    )


def parse() -> tuple[Options, int]:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument(
        "--concurrency", type=int, default=64, help="Confirmed publishes in flight."
    )
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    options = Options(
        url=args.url, count=args.count, prefetch=args.prefetch, concurrency=args.concurrency
    )
    return options, args.rounds


if __name__ == "__main__":
    options, rounds = parse()
    asyncio.run(main(options, rounds))
