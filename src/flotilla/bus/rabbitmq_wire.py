"""One socket write per pass of the event loop for an AMQP connection.

aiormq's writer task hands every frame it takes from its queue to the stream writer on its
own, and a write to a socket with nothing queued is sent at once, on uvloop as on asyncio's
own loop. A burst of publishes (the outbox relay sends up to a hundred at a time) therefore
leaves as a system call and a TCP segment per message, and the broker reads them one by one.

``CoalescingTransportFactory`` is handed to aiormq through its ``transport_factory``
parameter. The writer it returns keeps what is written during one pass of the event loop
and sends it as one write when the pass ends (``loop.call_soon``). ``drain``, ``write_eof``
and ``close`` send what is kept first, so the order of frames, aiormq's waits for a frame to
be written, and the transport's flow control are as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiormq import TransportFactory
from aiormq.exceptions import AMQPConnectionError

if TYPE_CHECKING:
    from yarl import URL

Chunk = bytes | bytearray | memoryview


class CoalescingWriter(asyncio.StreamWriter):
    """A stream writer that joins the writes of one pass of the event loop."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._pass_loop = loop
        self._kept: list[Chunk] = []

    def write(self, data: Chunk) -> None:
        if not self._kept:
            self._pass_loop.call_soon(self.flush)
        # A transport copies what it cannot send at once; kept bytes are sent later, so a
        # buffer the caller may reuse is copied here (aiormq writes bytes, kept as they are).
        self._kept.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, data: Iterable[Chunk]) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Hand what was written since the last flush to the transport, as one write."""
        if not self._kept:
            return
        kept, self._kept = self._kept, []
        if self.transport.is_closing():
            # The connection is going; aiormq learns it from its reader, and the publishes
            # still unconfirmed fail there, as they would had these bytes met a dead socket.
            return
        super().write(kept[0] if len(kept) == 1 else b"".join(kept))

    async def drain(self) -> None:
        self.flush()
        await super().drain()

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


class CoalescingTransportFactory(TransportFactory):
    """aiormq's TCP (``amqp``) and TLS (``amqps``) connection, with a ``CoalescingWriter``."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # aiormq always passes its provider; for amqps, no provider fails, never plain TCP.
        ssl_context_provider = kwargs.pop("ssl_context_provider", None)
        ssl = await ssl_context_provider.get_context() if url.scheme == "amqps" else None
        if url.host is None or url.port is None:
            raise AMQPConnectionError(f"no host or port in the broker URL {url.with_user(None)}")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, url.host, url.port, ssl=ssl, **kwargs
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, CoalescingWriter(transport, protocol, reader, loop)
