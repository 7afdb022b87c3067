"""h2pool's own TLS layer (``h2pool.tls_transport``) against an in-process TLS server on 127.0.0.1.

One behaviour per test: what the connection above it sees of the handshake,
of data, of closes from either side, and of failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from h2pool import tls_transport
from h2pool.tls_transport import _TLSLayer, open_tls
from tests.servers import Certs

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Recorder(asyncio.Protocol):
    """The protocol above the TLS layer: records what it is told."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.data = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.received = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.received.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@contextlib.asynccontextmanager
async def tls_server(certs: Certs, handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=certs.server_ssl_context())
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def connected_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


async def test_data_sent_right_after_the_handshake_reaches_the_connection(certs: Certs) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        await reader.read()
        writer.close()

    async with asyncio.timeout(10), tls_server(certs, greet) as port:
        app = Recorder()
        transport = await open_tls(app, connected_socket(port), certs.client_ssl_context(), "127.0.0.1")
        assert app.transport is transport
        await app.received.wait()
        assert bytes(app.data) == b"hello"
        transport.abort()


async def test_written_data_is_encrypted_to_the_server_and_echoed_back(certs: Certs) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(200_000)
        writer.write(data)
        await writer.drain()
        writer.close()

    payload = (bytes(range(256)) * 782)[:200_000]
    async with asyncio.timeout(10), tls_server(certs, echo) as port:
        app = Recorder()
        transport = await open_tls(app, connected_socket(port), certs.client_ssl_context(), "127.0.0.1")
        transport.write(payload[:1000])
        transport.writelines([payload[1000:5000], payload[5000:]])
        await app.lost
        assert bytes(app.data) == payload


async def test_close_sends_close_notify_and_the_server_sees_a_clean_end(certs: Certs) -> None:
    ended: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def read_to_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A clean TLS end (close_notify) reads as b"", not as an error.
        ended.set_result(await reader.read())
        writer.close()

    async with asyncio.timeout(10), tls_server(certs, read_to_end) as port:
        app = Recorder()
        transport = await open_tls(app, connected_socket(port), certs.client_ssl_context(), "127.0.0.1")
        transport.write(b"bye")
        transport.close()
        assert transport.is_closing()
        transport.write(b"ignored after close")
        assert await ended == b"bye"
        assert await app.lost is None


async def test_the_servers_close_reaches_the_connection_as_connection_lost(certs: Certs) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with asyncio.timeout(10), tls_server(certs, hang_up) as port:
        app = Recorder()
        await open_tls(app, connected_socket(port), certs.client_ssl_context(), "127.0.0.1")
        assert await app.lost is None


async def test_extra_info_exposes_the_ssl_object_and_the_socket(certs: Certs) -> None:
    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with asyncio.timeout(10), tls_server(certs, idle) as port:
        app = Recorder()
        transport = await open_tls(app, connected_socket(port), certs.client_ssl_context(), "127.0.0.1")
        ssl_object = transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        assert ssl_object.selected_alpn_protocol() == "h2"
        assert transport.get_extra_info("peercert")["subjectAltName"]
        assert transport.get_extra_info("cipher") == ssl_object.cipher()
        assert transport.get_extra_info("peername")[1] == port
        transport.abort()
        assert await app.lost is None


async def test_an_untrusted_certificate_fails_the_handshake_and_closes_the_socket(certs: Certs) -> None:
    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with asyncio.timeout(10), tls_server(certs, idle) as port:
        app = Recorder()
        sock = connected_socket(port)
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_tls(app, sock, ssl.create_default_context(), "127.0.0.1")
        assert app.transport is None
        await asyncio.sleep(0)  # asyncio closes an aborted socket on the next iteration
        assert sock.fileno() == -1


class _MemoryTCP(asyncio.Transport):
    """The TCP side of a TLS layer driven by hand: keeps what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


def _feed(layer: _TLSLayer, data: bytes) -> None:
    """What asyncio does for a buffered protocol: read into its buffer, then say how much."""
    buffer = layer.get_buffer(len(data))
    buffer[: len(data)] = data
    layer.buffer_updated(len(data))


def _pump(source: ssl.MemoryBIO, layer_or_server: _TLSLayer | ssl.MemoryBIO) -> None:
    data = source.read()
    if data and isinstance(layer_or_server, _TLSLayer):
        _feed(layer_or_server, data)
    elif data:
        layer_or_server.write(data)


@dataclass
class InMemoryTLS:
    """A client TLS layer and a server ``SSLObject``, handshaken over memory BIOs."""

    layer: _TLSLayer
    server: ssl.SSLObject
    server_out: ssl.MemoryBIO
    app: Recorder
    calls: list[int]

    def server_sends(self, plaintext: bytes) -> bytes:
        """The ciphertext of ``plaintext`` from the server, not yet fed to the layer."""
        self.server.write(plaintext)
        return self.server_out.read()


def _handshaken(certs: Certs) -> InMemoryTLS:
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = certs.server_ssl_context().wrap_bio(server_in, server_out, server_side=True)
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = certs.client_ssl_context().wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    app = Recorder()
    calls: list[int] = []
    recorded = app.data_received
    app.data_received = lambda data: (calls.append(len(data)), recorded(data))  # type: ignore[method-assign]
    layer = _TLSLayer(app, sslobj, client_in, client_out)
    tcp = _MemoryTCP()
    layer.connection_made(tcp)
    for _ in range(10):
        server_in.write(bytes(tcp.written))
        tcp.written.clear()
        with contextlib.suppress(ssl.SSLWantReadError):
            server.do_handshake()
        _pump(server_out, layer)
        if layer.transport is not None and not tcp.written:
            break
    assert layer.transport is not None, "the in-memory handshake did not finish"
    return InMemoryTLS(layer, server, server_out, app, calls)


@pytest.mark.parametrize("record_room", [16 * 1024, 1], ids=["real-bound", "buffer-must-grow"])
async def test_records_split_across_reads_arrive_whole_one_call_per_read(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, record_room: int
) -> None:
    # With one byte of room, a record OpenSSL started on the previous read
    # does not fit beside the ciphertext of this one: the buffer has to grow.
    monkeypatch.setattr(tls_transport, "_RECORD_SIZE", record_room)
    monkeypatch.setattr(tls_transport, "_RECORD_ROOM", bytes(record_room))
    tls = _handshaken(certs)
    plaintext = bytes(range(256)) * 400
    wire = tls.server_sends(plaintext)
    reads = [wire[i : i + 7_000] for i in range(0, len(wire), 7_000)]
    for chunk in reads:
        _feed(tls.layer, chunk)
    assert bytes(tls.app.data) == plaintext
    assert len(tls.calls) <= len(reads)


async def test_a_large_read_is_handed_over_in_pieces_below_glibcs_mmap_threshold(certs: Certs) -> None:
    tls = _handshaken(certs)
    plaintext = bytes(range(256)) * 1200  # 300 KiB, in one socket read
    _feed(tls.layer, tls.server_sends(plaintext))
    assert bytes(tls.app.data) == plaintext
    assert len(tls.calls) >= 4
    assert max(tls.calls) <= tls_transport._PLAINTEXT_PIECE + tls_transport._RECORD_SIZE < 128 * 1024
