"""The AMQP connection's socket writer: one write per pass of the event loop, order kept.

Each test talks to a real TCP server on loopback and counts the TCP segments with data the
client's socket sent, as the kernel reports them (``tcpi_data_segs_out`` of ``TCP_INFO``).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from flotilla.bus.rabbitmq_wire import CoalescingTransportFactory

_DATA_SEGS_OUT = 156  # offset of tcpi_data_segs_out in Linux's struct tcp_info


def data_segments_sent(sock: socket.socket) -> int:
    """How many TCP segments carrying data the socket has sent."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, _DATA_SEGS_OUT)[0])


def segments_sent(writer: asyncio.StreamWriter) -> int:
    """How many TCP segments carrying data the writer's socket has sent."""
    return data_segments_sent(writer.get_extra_info("socket"))


@dataclass
class Peer:
    """A loopback server that keeps every byte it receives."""

    port: int
    received: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            async with self.arrived:
                self.received += data
                self.arrived.notify_all()
        self.closed.set()
        writer.close()

    async def got(self, size: int) -> bytes:
        async with asyncio.timeout(5), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= size)
        return bytes(self.received)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    peer = Peer(port=0)
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    async with server:
        yield peer


async def connect(peer: Peer) -> asyncio.StreamWriter:
    url = URL(f"amqp://guest:guest@127.0.0.1:{peer.port}/")
    _, writer = await CoalescingTransportFactory().create(url)
    return writer


async def test_the_writes_of_one_pass_leave_as_one_segment_in_order(peer: Peer) -> None:
    """Fifty frames written in one pass reach the peer whole and in order, in one segment
    (a plain stream writer sends them as dozens)."""
    writer = await connect(peer)
    frames = [f"frame {n:03};".encode() for n in range(50)]
    before = segments_sent(writer)
    for frame in frames:
        writer.write(frame)
    assert await peer.got(sum(map(len, frames))) == b"".join(frames)
    assert segments_sent(writer) - before == 1
    writer.close()


async def test_a_buffer_reused_after_write_is_sent_as_it_was(peer: Peer) -> None:
    """The writer sends later than ``write`` returns, so it keeps a copy of a mutable buffer."""
    writer = await connect(peer)
    buffer = bytearray(b"first")
    writer.write(buffer)
    buffer[:] = b"again"
    writer.write(buffer)
    assert await peer.got(10) == b"firstagain"
    writer.close()


async def test_drain_hands_over_what_is_kept_at_once(peer: Peer) -> None:
    """After ``drain`` the bytes are on their way, before the pass ends."""
    writer = await connect(peer)
    before = segments_sent(writer)
    writer.write(b"heartbeat")
    writer.write(b"ack")
    await writer.drain()
    assert segments_sent(writer) - before == 1
    assert await peer.got(12) == b"heartbeatack"
    writer.close()


async def test_close_sends_what_is_kept_before_closing(peer: Peer) -> None:
    """A close frame written just before ``close`` still reaches the peer, then EOF."""
    writer = await connect(peer)
    writer.writelines([b"connection.close", b";"])
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(5):
        await peer.closed.wait()
    assert bytes(peer.received) == b"connection.close;"


async def test_nothing_listening_is_aiormqs_connection_error() -> None:
    """A refused connection raises the error aio-pika's reconnection expects."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AMQPConnectionError):
        await CoalescingTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))
