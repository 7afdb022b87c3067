"""TLS over a plain TCP transport, with ``ssl.SSLObject`` and two memory BIOs.

asyncio's own TLS (``sslproto``) has two costs a connection pool feels:
its ``create_connection`` takes no TLS session to offer (cpython#79152),
and every connection holds a 256 KiB read buffer for its whole life
(``SSLProtocol.max_size``): half the memory of 10,000 streams over 40
connections. Here the socket is read into one buffer per thread (the layer
is an ``asyncio.BufferedProtocol``), its bytes go into a ``MemoryBIO``; OpenSSL
decrypts every complete record into one buffer, handed to the HTTP/2
connection in one ``data_received`` per socket read (a ``bytearray``, not
``bytes``: the receiver owns it). Nothing is kept between reads but
OpenSSL's own state.

The connection above sees an ordinary ``asyncio.Transport``: ``write``,
``close``, ``abort``, flow control, and ``get_extra_info("ssl_object")``
for ALPN, session reuse and certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterable
from typing import Any, cast

#: The most plaintext one TLS record carries (RFC 8446 §5.1, RFC 5246 §6.2.1).
_RECORD_SIZE = 16 * 1024
_RECORD_ROOM = bytes(_RECORD_SIZE)


class Plaintext(bytearray):
    """One socket read's decrypted bytes, handed to ``data_received`` and never touched again here.

    Its own type says the receiver owns it and may keep it as its buffer
    (h2pool's frame buffer does) where it would have to copy any other
    ``bytearray``, which its creator might reuse.
    """

    __slots__ = ()


#: Plaintext handed to the connection per call, at most (plus one record).
_PLAINTEXT_PIECE = 64 * 1024

#: Ciphertext taken from the socket per read (asyncio's own read size).
_READ_SIZE = 256 * 1024

_read_buffers = threading.local()


def _read_buffer() -> bytearray:
    """The buffer sockets are read into, one per thread.

    Reading into a fresh ``bytes`` per read costs an allocation as large as
    the read, which glibc serves from fresh pages (page faults) at this size.
    The ciphertext is copied into the connection's ``MemoryBIO`` within the
    same call, so every connection of a thread's event loop can share one.
    """
    buffer: bytearray | None = getattr(_read_buffers, "buffer", None)
    if buffer is None:
        buffer = _read_buffers.buffer = bytearray(_READ_SIZE)
    return buffer


class TLSTransport(asyncio.Transport):
    """The transport the HTTP/2 connection writes to: encrypts, then writes to TCP."""

    def __init__(self, layer: _TLSLayer) -> None:
        super().__init__()
        self._layer = layer
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._layer.encrypt(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._layer.shutdown()

    def abort(self) -> None:
        self._closing = True
        self._layer.tcp.abort()

    def is_closing(self) -> bool:
        return self._closing or self._layer.tcp.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._layer.sslobj
        if name == "ssl_object":
            return sslobj
        if name == "peercert":
            return sslobj.getpeercert()
        if name == "cipher":
            return sslobj.cipher()
        return self._layer.tcp.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._layer.tcp.pause_reading()

    def resume_reading(self) -> None:
        self._layer.tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._layer.tcp.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._layer.tcp.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._layer.tcp.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._layer.tcp.set_write_buffer_limits(high, low)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._layer.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.app


class _TLSLayer(asyncio.BufferedProtocol):
    """The TCP transport's protocol: runs the handshake, then decrypts for ``app``."""

    def __init__(self, app: asyncio.Protocol, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
        self.app = app
        self.sslobj = sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tcp: asyncio.Transport
        self.transport: TLSTransport | None = None
        self._error: Exception | None = None

    # TCP side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.tcp = transport
        self._step_handshake()

    def get_buffer(self, sizehint: int) -> bytearray:
        return _read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        with memoryview(_read_buffer()) as view, view[:nbytes] as received:
            self._incoming.write(received)
        if self.transport is None:
            self._step_handshake()
        else:
            self._decrypt()

    def eof_received(self) -> bool:
        # A TCP half-close ends the connection; the close follows.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            if not self.handshake.done():
                self.handshake.set_exception(ConnectionResetError(f"connection closed during the TLS handshake: {exc}"))
            return
        self.transport._closing = True
        self.app.connection_lost(exc or self._error)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.app.resume_writing()

    # TLS.

    def _step_handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._send_pending()
            return
        except Exception as exc:
            self._send_pending()
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            self.tcp.abort()
            return
        self._send_pending()
        self.transport = TLSTransport(self)
        if not self.handshake.done():
            self.handshake.set_result(None)
        self.app.connection_made(self.transport)
        # Application data may have come in the same read as the handshake's end.
        self._decrypt()

    def _decrypt(self) -> None:
        """Decrypt every complete record, handing the plaintext over in pieces of about 64 KiB.

        OpenSSL decrypts straight into each piece: no bytes object per
        record and no join. Pieces stay below the size at which glibc
        serves an allocation from fresh pages (128 KiB by default), so a
        large read costs no page faults here, nor in what the receiver
        builds from a piece; handing 256 KiB over at once made 1 MiB
        downloads markedly slower than 64 KiB windows did.
        """
        transport = self.transport
        more = True
        while more and transport is not None and not transport._closing:
            more = self._decrypt_piece(transport)

    def _decrypt_piece(self, transport: TLSTransport) -> bool:
        """Decrypt up to about :data:`_PLAINTEXT_PIECE` bytes and hand them over; whether more may follow.

        The ciphertext waiting in the BIO bounds the plaintext, plus at most
        one record whose start OpenSSL took from the BIO on an earlier call;
        the buffer grows by a record if ever full.
        """
        plain = Plaintext(min(self._incoming.pending, _PLAINTEXT_PIECE) + _RECORD_SIZE)
        view = memoryview(plain)
        size = 0
        more = False
        while not transport._closing:
            if size == len(plain):
                view.release()
                plain += _RECORD_ROOM
                view = memoryview(plain)
            try:
                # With a buffer, read returns the byte count (typeshed says bytes).
                count = cast(int, self.sslobj.read(len(plain) - size, view[size:]))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                self._error = exc
                self.tcp.abort()
                break
            if not count:
                # The server's close_notify (no data is SSLWantReadError):
                # nothing more will come, whether or not it closes TCP too.
                self.tcp.close()
                break
            size += count
            if not self._incoming.pending and not self.sslobj.pending():
                # All read: another call would only raise SSLWantReadError,
                # an exception per socket read on the hot path.
                break
            if size >= _PLAINTEXT_PIECE:
                more = True
                break
        view.release()
        # Reading may produce output: TLS 1.3 key updates, alerts.
        self._send_pending()
        if size and not transport._closing:
            del plain[size:]
            # Fresh per piece and never touched again here: the receiver owns it.
            self.app.data_received(plain)  # type: ignore[arg-type]
        return more

    def encrypt(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = self.sslobj.write(view)
                view = view[written:]
        except ssl.SSLError as exc:
            # A TLS 1.2 renegotiation or a broken session: the connection
            # cannot carry more; its streams learn so from connection_lost.
            self._error = exc
            self.tcp.abort()
            return
        self._send_pending()

    def shutdown(self) -> None:
        """Send close_notify, then close TCP once its buffer is flushed."""
        # The peer's close_notify is not awaited: unwrap raises wanting it.
        with contextlib.suppress(ssl.SSLError):
            self.sslobj.unwrap()
        self._send_pending()
        self.tcp.close()

    def _send_pending(self) -> None:
        data = self._outgoing.read()
        if data:
            self.tcp.write(data)


async def open_tls(
    app: asyncio.Protocol,
    sock: socket.socket,
    context: ssl.SSLContext,
    server_hostname: str,
    session: ssl.SSLSession | None = None,
) -> asyncio.Transport:
    """Run TLS over connected ``sock``, call ``app.connection_made`` with the TLS transport, return it.

    Raises what the handshake raised (``ssl.SSLCertVerificationError``,
    ``ssl.SSLError``, ``OSError``); on any failure or cancellation the socket
    is closed.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname, session=session)
    layer = _TLSLayer(app, sslobj, incoming, outgoing)
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: layer, sock=sock)
        await layer.handshake
    except BaseException:
        # Cancelled inside create_connection, the handshake has already
        # started: nobody will await its outcome now.
        layer.handshake.cancel()
        if hasattr(layer, "tcp"):
            layer.tcp.abort()
        raise
    assert layer.transport is not None
    return layer.transport
