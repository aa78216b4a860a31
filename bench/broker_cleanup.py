"""Housekeeping shared by the benchmarks: remove what a run declared on the broker."""

from __future__ import annotations

import aio_pika

from flotilla.bus import Topology


async def delete_topology(url: str, topology: Topology) -> None:
    """Remove every exchange and queue the run declared (retry tiers and DLQ included)."""
    exchanges, queues, _ = topology.declarations()
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        for queue in queues:
            await channel.queue_delete(queue.name)
        for exchange in exchanges:
            await channel.exchange_delete(exchange.name)
