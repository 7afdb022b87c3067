"""A scripted, misbehaving HTTP/2 server over real TLS on 127.0.0.1.

Real servers only misbehave by accident; this one misbehaves on purpose, one
frame at a time. Every accepted connection becomes a :class:`Peer` and runs
the test's ``script(peer)`` coroutine, which decides what the server sends:
well-formed frames built with ``hyperframe`` and ``hpack``, or raw bytes no
library would produce (a WINDOW_UPDATE of 0, a frame header announcing more
than the client's SETTINGS_MAX_FRAME_SIZE).

The peer keeps reading in the background and records what the client sends
(requests, RST_STREAM, GOAWAY, PINGs), acknowledges SETTINGS and answers
PINGs unless told not to, and counts every request on every connection in
:attr:`HostileServer.attempts`, so a test can tell a replay from a first try.

Every wait is bounded: a script that waits for something the client never
sends raises ``TimeoutError`` instead of hanging the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Self

import hpack
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: How long a script waits for the client before giving up.
WAIT = 5.0

#: What the server announces unless a script says otherwise.
DEFAULT_SETTINGS: Mapping[int, int] = {SettingCodes.MAX_CONCURRENT_STREAMS: 100}

FRAME_DATA = 0x0
FRAME_HEADERS = 0x1
FRAME_SETTINGS = 0x4
FRAME_PING = 0x6
FRAME_WINDOW_UPDATE = 0x8
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4

HeaderList = Iterable[tuple[str | bytes, str | bytes]]
Script = Callable[["Peer"], Awaitable[None]]


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"", *, length: int | None = None) -> bytes:
    """A frame as bytes, with no checks: ``length`` may differ from the payload's."""
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + struct.pack(">BBI", frame_type, flags, stream_id) + payload


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE with any 31-bit increment, 0 included (hyperframe refuses 0)."""
    return raw_frame(FRAME_WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclass
class Request:
    """A request as the server received it."""

    peer: Peer
    stream_id: int
    headers: list[tuple[bytes, bytes]]
    end_stream: bool
    body: bytearray = field(default_factory=bytearray)

    def header(self, name: str) -> str | None:
        wanted = name.encode()
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    @property
    def path(self) -> str:
        return self.header(":path") or ""


class Peer:
    """The server side of one accepted connection."""

    def __init__(self, server: HostileServer, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        #: 0 for the first connection the server accepted, 1 for the next...
        self.index = index
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        #: Answer the client's PINGs (a healthy server does).
        self.answer_pings = True
        #: Every frame the client sent, in order.
        self.frames: list[Frame] = []
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.streams: dict[int, Request] = {}
        self.resets: list[tuple[int, int]] = []
        self.goaways: list[tuple[int, int]] = []
        #: PINGs the client sent (not ACKs).
        self.pings_received = 0
        #: ACKs of PINGs the server sent.
        self.ping_acks = 0
        #: SETTINGS the client sent (not ACKs), and ACKs of the server's.
        self.settings_received = 0
        self.settings_acks = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        #: Set when the client closed or reset the connection.
        self.closed = asyncio.Event()
        self._preface_sent = False
        self._unacked_settings = 0
        self._header_block: tuple[HeadersFrame, bytearray] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Peer #{self.index} frames={len(self.frames)} closed={self.closed.is_set()}>"

    # Sending.

    def send(self, *items: Frame | bytes) -> None:
        """Write frames (or raw bytes) as they are; nothing is checked."""
        data = b"".join(item if isinstance(item, bytes) else item.serialize() for item in items)
        if self.writer.is_closing():
            return
        self.bytes_sent += len(data)
        self.writer.write(data)

    def send_preface(self, settings: Mapping[int, int] | None = None) -> None:
        """The server's SETTINGS; from now on the client's SETTINGS and PINGs are answered."""
        self._preface_sent = True
        self.send(SettingsFrame(0, settings=dict(DEFAULT_SETTINGS if settings is None else settings)))
        for _ in range(self._unacked_settings):
            self.send(SettingsFrame(0, flags=["ACK"]))
        self._unacked_settings = 0

    def header_block(self, headers: HeaderList) -> bytes:
        return self.encoder.encode([(_as_bytes(k), _as_bytes(v)) for k, v in headers])

    def send_headers(self, stream_id: int, headers: HeaderList, *, end_stream: bool = False) -> None:
        """HEADERS, followed by CONTINUATION frames if the block needs more than one frame."""
        block = self.header_block(headers)
        chunks = [block[i : i + 16_384] for i in range(0, len(block), 16_384)] or [b""]
        first = HeadersFrame(stream_id, chunks[0])
        if end_stream:
            first.flags.add("END_STREAM")
        frames: list[Frame] = [first]
        frames.extend(ContinuationFrame(stream_id, chunk) for chunk in chunks[1:])
        frames[-1].flags.add("END_HEADERS")
        self.send(*frames)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        chunks = [data[i : i + 16_384] for i in range(0, len(data), 16_384)] or [b""]
        frames = [DataFrame(stream_id, chunk) for chunk in chunks]
        if end_stream:
            frames[-1].flags.add("END_STREAM")
        self.send(*frames)

    def respond(self, stream_id: int, body: bytes = b"", *, status: int = 200, headers: HeaderList = ()) -> None:
        """A complete, well-formed response naming this connection in ``x-connection``."""
        head = [(":status", str(status)), ("x-connection", str(self.index)), *headers]
        self.send_headers(stream_id, head, end_stream=not body)
        if body:
            self.send_data(stream_id, body, end_stream=True)

    def reset(self, stream_id: int, error_code: int) -> None:
        self.send(RstStreamFrame(stream_id, error_code=error_code))

    def goaway(self, last_stream_id: int, error_code: int = ErrorCodes.NO_ERROR) -> None:
        self.send(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code))

    async def drain(self) -> bool:
        """Wait until the socket took what was written; False once the client is gone."""
        if self.writer.is_closing():
            return False
        try:
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError, RuntimeError):
            return False
        return not self.writer.is_closing()

    def close(self) -> None:
        """Close the connection cleanly (TLS close_notify, then FIN), no GOAWAY."""
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection without a word."""
        self.writer.transport.abort()

    def stop_reading(self) -> None:
        """Never read from the client again: its writes back up into the sockets' buffers."""
        # Small buffers on this side, so the back-pressure reaches the client
        # after a few hundred KiB instead of many MiB.
        self.writer.transport.set_read_buffer_limits(high=4096)  # type: ignore[attr-defined]
        if self._reader_task is not None:
            self._reader_task.cancel()
        # asyncio's TLS layer would go on reading the socket into its own
        # buffers for a while (how long varies run to run): stop the socket
        # itself, so the client's writes really back up.
        ssl_protocol = getattr(self.writer.transport, "_ssl_protocol", None)
        raw = getattr(ssl_protocol, "_transport", None)
        if raw is not None:
            raw.pause_reading()

    # Waiting for the client.

    async def next_request(self, timeout: float = WAIT) -> Request:
        async with asyncio.timeout(timeout):
            return await self.requests.get()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``predicate()`` holds after some frame from the client."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()

    # Reading.

    def start_reading(self) -> None:
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        buffer = bytearray()
        preface_left = len(CLIENT_PREFACE)
        try:
            while True:
                data = await self.reader.read(65_536)
                if not data:
                    break
                self.bytes_received += len(data)
                buffer += data
                if preface_left:
                    taken = min(preface_left, len(buffer))
                    if bytes(buffer[:taken]) != CLIENT_PREFACE[len(CLIENT_PREFACE) - preface_left :][:taken]:
                        raise AssertionError(f"bad client preface: {bytes(buffer[:taken])!r}")
                    del buffer[:taken]
                    preface_left -= taken
                while len(buffer) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(bytes(buffer[:9])))
                    if len(buffer) < 9 + length:
                        break
                    frame.parse_body(memoryview(bytes(buffer[9 : 9 + length])))
                    del buffer[: 9 + length]
                    self._on_frame(frame)
                self._changed.set()
        except (ConnectionError, ssl.SSLError):
            pass
        # Not on cancellation: stop_reading() leaves the connection open.
        self.closed.set()
        self._changed.set()

    def _on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acks += 1
            else:
                self.settings_received += 1
                if self._preface_sent:
                    self.send(SettingsFrame(0, flags=["ACK"]))
                else:
                    self._unacked_settings += 1
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.ping_acks += 1
            else:
                self.pings_received += 1
                if self.answer_pings and self._preface_sent:
                    self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame):
            self._header_block = (frame, bytearray(frame.data))
            if "END_HEADERS" in frame.flags:
                self._end_header_block()
        elif isinstance(frame, ContinuationFrame) and self._header_block is not None:
            self._header_block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                self._end_header_block()
        elif isinstance(frame, DataFrame):
            request = self.streams.get(frame.stream_id)
            if request is not None:
                request.body += frame.data
        elif isinstance(frame, RstStreamFrame):
            self.resets.append((frame.stream_id, frame.error_code))
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append((frame.error_code, frame.last_stream_id))

    def _end_header_block(self) -> None:
        assert self._header_block is not None
        first, block = self._header_block
        self._header_block = None
        headers = [(bytes(k), bytes(v)) for k, v in self.decoder.decode(bytes(block), raw=True)]
        if first.stream_id in self.streams:
            return  # trailers
        request = Request(self, first.stream_id, headers, "END_STREAM" in first.flags)
        self.streams[first.stream_id] = request
        self.server.attempts.append(request)
        self.requests.put_nowait(request)


async def serve_ok(peer: Peer) -> None:
    """A well-behaved server: SETTINGS, then ``ok <path>`` for every request, until the client leaves."""
    peer.send_preface()
    while not peer.closed.is_set():
        try:
            request = await peer.next_request(timeout=60)
        except TimeoutError:
            return
        peer.respond(request.stream_id, f"ok {request.path}".encode())


class HostileServer:
    """``async with HostileServer(ssl_context, script) as server``: a TLS listener on 127.0.0.1.

    Each connection runs ``script(peer)`` (or ``scripts[i]`` for the i-th
    connection, the last one repeating). An exception in a script fails the
    test when the server closes. ``rcvbuf`` shrinks the accepted sockets'
    receive buffers, so a server that stops reading pushes back on the client
    after a few KiB.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *scripts: Script,
        rcvbuf: int | None = None,
    ) -> None:
        if not scripts:
            raise ValueError("give at least one script")
        self.ssl_context = ssl_context
        self.scripts = scripts
        self.rcvbuf = rcvbuf
        self.peers: list[Peer] = []
        #: Every request received, on any connection, in order.
        self.attempts: list[Request] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{self.origin}{path}"

    async def __aenter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf is not None:
            # Accepted sockets inherit it; it must be set before listen().
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(
            self._accept,
            sock=sock,
            ssl=self.ssl_context,
            ssl_handshake_timeout=5.0,
            limit=4096 if self.rcvbuf is not None else 65_536,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._server.wait_closed()
        if self.errors and exc_info[0] is None:
            raise AssertionError(f"the server script failed: {self.errors[0]!r}") from self.errors[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index = len(self.peers)
        peer = Peer(self, index, reader, writer)
        self.peers.append(peer)
        peer.start_reading()
        script = self.scripts[min(index, len(self.scripts) - 1)]
        try:
            await script(peer)
            # The script is done; keep the connection as it is until the client leaves.
            await peer.closed.wait()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            if peer._reader_task is not None:
                peer._reader_task.cancel()
            writer.transport.abort()
