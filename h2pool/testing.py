"""An in-memory HTTP/2 server for testing code that uses h2pool, with no sockets.

Real servers decide for themselves when to send SETTINGS, how much window to
give, when to reset or GOAWAY; a test against one can only hope to hit a given
behaviour. Here a test plays the server: it is handed each request as the
bytes arrive and says, frame by frame, what the server does next. The peer is
h2's own server-side state machine, so everything it sends is valid HTTP/2
unless the test deliberately sends raw bytes or hand-made frames.

The pieces:

* :class:`MockServer` plugs into ``Pool(connector=server.connector)``. Each
  connection the pool dials gets a new :class:`ScriptedPeer`, appended to
  ``server.peers`` so a test can count connections and script each.
* :class:`ScriptedPeer` records every frame and h2 event the client sends and
  offers the server's moves: SETTINGS, responses (flow-control aware),
  RST_STREAM, GOAWAY, WINDOW_UPDATE, raw frames, stalling and vanishing.
  ``handler=`` answers every complete request automatically (load-style
  tests); without one, the test answers by hand.
* :class:`MemoryTransport` is the ``asyncio.Transport`` the client writes
  into. Bytes for the client are delivered with ``loop.call_soon``, never
  from inside the client's own call, just as a socket would, so the client
  sees the same re-entrancy it sees in production.

Timing is deterministic: no timers are involved, each hop between client and
peer takes one event-loop iteration, and :func:`idle` runs the loop until a
given number of iterations have passed. Waits (:meth:`ScriptedPeer.wait_for`,
:meth:`ScriptedPeer.next_request`) are bounded and raise ``TimeoutError``
instead of hanging a test.

Example::

    server = MockServer(handler=lambda request: Reply(body=b"hello"))
    async with Pool(connector=server.connector) as pool:
        response = await pool.request("GET", "https://example.test/")
    assert response.content == b"hello" and len(server.peers) == 1
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from .client_h2 import goaway_event
from .connection import PEER_DATA_ERRORS, Connection

__all__ = [
    "CLIENT_PREFACE",
    "DEFAULT_SETTINGS",
    "DEFAULT_TIMEOUT",
    "FakeSSLObject",
    "Handler",
    "MemoryTransport",
    "MockServer",
    "PeerRequest",
    "Reply",
    "ScriptedPeer",
    "assert_slots_consistent",
    "idle",
]

#: What every HTTP/2 client sends first (RFC 9113 §3.4).
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: The settings a peer announces unless told otherwise. Real servers almost
#: always limit concurrent streams (nginx 128, nghttpd and hypercorn 100), so
#: the default peer does too; pass ``settings={}`` for an empty SETTINGS frame.
DEFAULT_SETTINGS: Mapping[int, int] = {SettingCodes.MAX_CONCURRENT_STREAMS: 100}

#: Seconds any wait of the kit may take before it raises ``TimeoutError``.
DEFAULT_TIMEOUT = 5.0

HeaderPairs = Iterable[tuple[str | bytes, str | bytes]] | Mapping[str, str]
RawHeaders = list[tuple[bytes, bytes]]
F = TypeVar("F", bound=Frame)

# The peer must be able to send what a broken server would (upper-case names,
# odd pseudo-headers) and must record exactly what the client sent, so h2's
# header validation and normalisation are off in both directions.
_PEER_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)


class _PeerH2Connection(h2.connection.H2Connection):
    """h2's server connection, still answering open streams after the client's GOAWAY.

    A client's GOAWAY only says it opens no more streams; the server may
    finish every stream already open (RFC 9113 §6.8). h2 4.x instead closes
    its whole state machine on receipt, so a peer could not answer the
    requests of a client that is closing gracefully.
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        return [], [goaway_event(frame)]


async def idle(rounds: int = 50) -> None:
    """Let ``rounds`` event-loop iterations pass.

    Each hop (client flush, delivery to the peer's output, delivery to the
    client) takes one iteration, so a few dozen let any exchange that is not
    waiting on a timer or on the test run to its end. Use it to assert that
    something did *not* happen, e.g. that no WINDOW_UPDATE was sent.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _encode_headers(headers: HeaderPairs | None) -> RawHeaders:
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(_as_bytes(name), _as_bytes(value)) for name, value in pairs]


def _raw(headers: Iterable[Any]) -> RawHeaders:
    """h2's header tuples as plain ``(bytes, bytes)`` pairs."""
    return [(_as_bytes(name), _as_bytes(value)) for name, value in headers]


class FakeSSLObject:
    """Stands in for ``ssl.SSLObject`` where the client looks up the ALPN result."""

    def __init__(self, alpn: str | None) -> None:
        self._alpn = alpn

    def selected_alpn_protocol(self) -> str | None:
        return self._alpn

    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    def getpeercert(self) -> dict[str, Any]:
        """No verified certificate: a scripted connection is never coalesced with another host's."""
        return {}


class MemoryTransport(asyncio.Transport):
    """The client's end of an in-memory pipe to a :class:`ScriptedPeer`.

    Writes reach the peer synchronously (the peer only records and queues,
    it never calls back into the client from inside ``write``). Everything
    for the client, data and ``connection_lost`` alike, goes through
    ``loop.call_soon`` in order, as with a real socket.
    """

    def __init__(self, peer: ScriptedPeer, protocol: asyncio.Protocol, *, alpn: str | None, tls: bool) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._peer = peer
        self._protocol = protocol
        self._ssl_object = FakeSSLObject(alpn) if tls else None
        #: The client called close() or abort().
        self.closed_by_client = False
        #: The client was told connection_lost (so nothing more is delivered).
        self.lost = False
        #: The peer has gone (vanished or closed); client writes go nowhere.
        self.peer_gone = False
        #: Bytes the client wrote after the pipe closed; a real transport drops them too.
        self.dropped_writes = 0
        self._reading = True
        self._held = bytearray()

    # What the client calls.

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl_object
        if name == "peername":
            return ("127.0.0.1", 443)
        if name == "sockname":
            return ("127.0.0.1", 50000)
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed_by_client or self.lost or self.peer_gone:
            self.dropped_writes += len(data)
            return
        self._peer._receive(bytes(data))

    def is_closing(self) -> bool:
        return self.closed_by_client or self.lost

    def close(self) -> None:
        self._close_from_client(aborted=False)

    def abort(self) -> None:
        self._close_from_client(aborted=True)

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._loop.call_soon(self._release_held)

    def is_reading(self) -> bool:
        return self._reading and not self.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("HTTP/2 never half-closes its transport")

    # What the peer calls.

    def _close_from_client(self, *, aborted: bool) -> None:
        if self.closed_by_client or self.lost:
            if aborted and not self.lost:
                # abort() after close(): the pending close is now an abort.
                self._peer.client_aborted = True
            return
        self.closed_by_client = True
        self._peer._client_closed(aborted)
        # asyncio transports report connection_lost on a later iteration.
        self._loop.call_soon(self._lose, None)

    def _deliver(self, data: bytes) -> None:
        if self.closed_by_client or self.lost:
            # A closed socket is no longer read.
            return
        if self._reading and not self._held:
            self._protocol.data_received(data)
            return
        # Behind held bytes, or paused: keep the order the peer sent in.
        self._held += data
        self._release_held()

    def _release_held(self) -> None:
        if not self._held or not self._reading or self.closed_by_client or self.lost:
            return
        data, self._held = bytes(self._held), bytearray()
        self._protocol.data_received(data)

    def _lose(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.peer_gone = True
        self._protocol.connection_lost(exc)
        self._peer._notify()


@dataclass(eq=False)
class PeerRequest:
    """A request as the peer received it; fields grow as frames arrive."""

    peer: ScriptedPeer
    stream_id: int
    #: The header block exactly as sent, pseudo-headers included.
    headers: RawHeaders
    body: bytearray = field(default_factory=bytearray)
    trailers: RawHeaders | None = None
    #: END_STREAM arrived: the request is complete.
    complete: bool = False
    #: The code of the client's RST_STREAM, if it reset the stream.
    reset_code: ErrorCodes | int | None = None
    #: A response (or reset) was queued by the test or the handler.
    answered: bool = False

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower-case, or a pseudo-header), as text."""
        wanted = name.encode("latin-1")
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    @property
    def method(self) -> str | None:
        return self.header(":method")

    @property
    def path(self) -> str | None:
        return self.header(":path")

    @property
    def authority(self) -> str | None:
        return self.header(":authority")

    def respond(
        self,
        status: int = 200,
        headers: HeaderPairs | None = None,
        body: bytes = b"",
        trailers: HeaderPairs | None = None,
    ) -> None:
        """Shorthand for :meth:`ScriptedPeer.respond` on this stream."""
        self.peer.respond(self.stream_id, status, headers, body, trailers)

    def reset(self, error_code: ErrorCodes | int = ErrorCodes.CANCEL) -> None:
        """Shorthand for :meth:`ScriptedPeer.reset` on this stream."""
        self.peer.reset(self.stream_id, error_code)

    async def wait_complete(self, timeout: float = DEFAULT_TIMEOUT) -> PeerRequest:
        """Wait until the request has ended (END_STREAM) or been reset."""
        await self.peer.wait_for(
            lambda: self.complete or self.reset_code is not None,
            timeout=timeout,
            what=f"the end of request stream {self.stream_id}",
        )
        return self


@dataclass
class Reply:
    """What a :data:`Handler` returns: a response to send, or a reset."""

    status: int = 200
    headers: HeaderPairs | None = None
    body: bytes = b""
    trailers: HeaderPairs | None = None
    #: Reset the stream with this code instead of responding.
    reset: ErrorCodes | int | None = None


#: Computes the answer to a complete request. It may be async. Returning
#: None leaves the stream for the test to answer by hand.
Handler = Callable[[PeerRequest], "Reply | Awaitable[Reply | None] | None"]


class _Outbox:
    """What the peer still has to send on one stream, in order.

    Body bytes wait here for flow-control window, and headers or trailers
    queued after them wait their turn, so a test can say "respond with 1 MB"
    and the peer sends it as fast as the client's windows allow.
    """

    __slots__ = ("items",)

    def __init__(self) -> None:
        #: ("headers", block, end_stream) or ("data", bytes, end_stream).
        self.items: deque[tuple[str, Any, bool]] = deque()

    @property
    def pending_body(self) -> int:
        return sum(len(item) for kind, item, _ in self.items if kind == "data")


class ScriptedPeer:
    """One server-side HTTP/2 connection whose every move a test scripts.

    It records what the client sends (``frames``: every frame, parsed
    independently of h2; ``events``: h2's server-side events; ``requests``:
    per stream) and sends what the test asks for. Without a ``handler``
    (given here or to :meth:`auto_respond`) requests stay unanswered until
    the test answers them.

    ``settings`` go into the server's first SETTINGS frame exactly (see
    :data:`DEFAULT_SETTINGS`). With ``ack_data`` (the default) received
    request bodies are acknowledged as h2 would, so uploads never stall;
    turn it off to hand out window only with :meth:`window_update`.
    ``max_read_size`` splits deliveries to the client into pieces of at most
    that many bytes, to exercise frames split across reads.
    """

    def __init__(
        self,
        *,
        settings: Mapping[int, int] | None = None,
        alpn: str | None = "h2",
        tls: bool = True,
        ack_data: bool = True,
        send_preface: bool = True,
        handler: Handler | None = None,
        max_read_size: int | None = None,
    ) -> None:
        self.settings: dict[int, int] = dict(DEFAULT_SETTINGS if settings is None else settings)
        self.alpn = alpn
        self.tls = tls
        self.ack_data = ack_data
        self.auto_preface = send_preface
        self.max_read_size = max_read_size
        self.handler: Handler | None = handler
        self.h2: h2.connection.H2Connection = _PeerH2Connection(config=_PEER_CONFIG)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=dict(self.settings))  # type: ignore[arg-type]
        self._apply_local_limits()
        self.transport: MemoryTransport | None = None
        self.client: asyncio.Protocol | None = None
        #: Every frame the client sent, in order (the preface excluded).
        self.frames: list[Frame] = []
        #: Every h2 event the client's bytes produced, in order.
        self.events: list[h2.events.Event] = []
        self.requests: dict[int, PeerRequest] = {}
        #: What went wrong on the peer's side: what h2 or the frame parser
        #: refused of the client's bytes, exceptions of the handler, and
        #: reactions to the client that failed. A correct client and script
        #: leave it empty.
        self.errors: list[BaseException] = []
        self.bytes_received = 0
        self.preface_sent = False
        #: SETTINGS frames sent, the preface's included.
        self.settings_sent = 0
        self.stalled = False
        self.client_closed = False
        self.client_aborted = False
        self._unclaimed: deque[PeerRequest] = deque()
        self._outboxes: dict[int, _Outbox] = {}
        self._out = bytearray()
        self._flush_scheduled = False
        self._parse_buffer = bytearray()
        self._preface_seen = False
        self._broken = False
        self._waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<ScriptedPeer requests={len(self.requests)} frames={len(self.frames)}>"

    def _apply_local_limits(self) -> None:
        # Initial values count as acknowledged, so h2 would not apply them.
        codes = SettingCodes
        if codes.MAX_FRAME_SIZE in self.settings:
            self.h2.max_inbound_frame_size = self.settings[codes.MAX_FRAME_SIZE]
        if codes.HEADER_TABLE_SIZE in self.settings:
            self.h2.decoder.max_allowed_table_size = self.settings[codes.HEADER_TABLE_SIZE]
        if codes.MAX_HEADER_LIST_SIZE in self.settings:
            self.h2.decoder.max_header_list_size = self.settings[codes.MAX_HEADER_LIST_SIZE]

    # Wiring.

    def attach(self, protocol: asyncio.Protocol) -> MemoryTransport:
        """Connect ``protocol`` (a client, e.g. h2pool's ``Connection``) to this peer."""
        if self.transport is not None:
            raise RuntimeError("this peer is already attached")
        self.client = protocol
        self.transport = MemoryTransport(self, protocol, alpn=self.alpn, tls=self.tls)
        if self.auto_preface:
            self.send_preface()
        protocol.connection_made(self.transport)
        return self.transport

    @property
    def connected(self) -> bool:
        """Neither side has closed the pipe."""
        transport = self.transport
        return transport is not None and not transport.is_closing() and not transport.peer_gone

    # Waiting.

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = DEFAULT_TIMEOUT, what: str = "the condition"
    ) -> None:
        """Wait until ``predicate()`` holds; it is checked whenever the client sends or closes."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError(f"{self!r}: no {what} within {timeout} s") from None

    async def next_request(self, *, complete: bool = False, timeout: float = DEFAULT_TIMEOUT) -> PeerRequest:
        """The next request not yet returned by this method, once its headers arrived.

        With ``complete`` it also waits for the request's end (or reset).
        """
        await self.wait_for(lambda: bool(self._unclaimed), timeout=timeout, what="new request")
        request = self._unclaimed.popleft()
        if complete:
            await request.wait_complete(timeout)
        return request

    @property
    def settings_acked(self) -> int:
        """How many SETTINGS ACKs the client has sent."""
        return sum(1 for frame in self.frames_of(SettingsFrame) if "ACK" in frame.flags)

    async def wait_settings_acked(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the client has acknowledged every SETTINGS frame sent so far.

        From then on the client applies them: before, it may legitimately
        act on defaults (e.g. send 65,535 bytes though the peer's
        INITIAL_WINDOW_SIZE is smaller), which the peer's h2 would count
        against it.
        """
        await self.wait_for(
            lambda: self.settings_acked >= self.settings_sent, timeout=timeout, what="SETTINGS acknowledgement"
        )

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the client has closed the connection."""
        await self.wait_for(lambda: self.client_closed, timeout=timeout, what="close by the client")

    # Receiving from the client.

    def _receive(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self._record_frames(data)
        if self._broken:
            return
        try:
            events = self.h2.receive_data(data)
        except PEER_DATA_ERRORS as exc:
            # A correct client never gets here. Record it, send h2's GOAWAY
            # and hang up, as a real server would.
            self.errors.append(exc)
            self._broken = True
            self._pump()
            self.disconnect()
            return
        for event in events:
            self.events.append(event)
            try:
                self._on_event(event)
            except Exception as exc:
                # The peer's own reaction failed (e.g. a handler's reply the
                # stream can no longer take). That must not surface inside
                # the client's transport.write().
                self.errors.append(exc)
        self._pump()
        self._notify()

    def _record_frames(self, data: bytes) -> None:
        buffer = self._parse_buffer
        buffer += data
        if not self._preface_seen:
            if len(buffer) < len(CLIENT_PREFACE):
                return
            if bytes(buffer[: len(CLIENT_PREFACE)]) != CLIENT_PREFACE:
                self.errors.append(ValueError(f"bad client preface {bytes(buffer[:24])!r}"))
            del buffer[: len(CLIENT_PREFACE)]
            self._preface_seen = True
        while len(buffer) >= 9:
            try:
                frame, length = Frame.parse_frame_header(memoryview(bytes(buffer[:9])))
            except hyperframe.exceptions.HyperframeError as exc:
                # Framing is lost: nothing after this can be parsed.
                self.errors.append(exc)
                buffer.clear()
                return
            if len(buffer) < 9 + length:
                return
            body = bytes(buffer[9 : 9 + length])
            del buffer[: 9 + length]
            try:
                frame.parse_body(memoryview(body))
            except hyperframe.exceptions.HyperframeError as exc:
                self.errors.append(exc)
            self.frames.append(frame)

    def _on_event(self, event: h2.events.Event) -> None:
        request: PeerRequest | None
        if isinstance(event, h2.events.RequestReceived):
            request = PeerRequest(self, event.stream_id, _raw(event.headers))
            self.requests[event.stream_id] = request
            self._unclaimed.append(request)
        elif isinstance(event, h2.events.DataReceived):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.body += event.data
            if self.ack_data and event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.trailers = _raw(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.complete = True
                self._dispatch(request)
        elif isinstance(event, h2.events.StreamReset):
            self._outboxes.pop(event.stream_id, None)
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.reset_code = event.error_code
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._push_all()

    def _client_closed(self, aborted: bool) -> None:
        self.client_closed = True
        self.client_aborted = aborted
        self._notify()

    # Recorded traffic.

    def frames_of(self, frame_type: type[F], stream_id: int | None = None) -> list[F]:
        """The client's frames of one type, optionally of one stream only."""
        return [
            frame
            for frame in self.frames
            if isinstance(frame, frame_type) and (stream_id is None or frame.stream_id == stream_id)
        ]

    def window_updates(self, stream_id: int) -> list[int]:
        """The increments of the client's WINDOW_UPDATEs for ``stream_id`` (0: the connection)."""
        return [frame.window_increment for frame in self.frames_of(WindowUpdateFrame, stream_id)]

    def resets(self, stream_id: int | None = None) -> list[tuple[int, int]]:
        """``(stream_id, error_code)`` of each RST_STREAM the client sent."""
        return [(frame.stream_id, frame.error_code) for frame in self.frames_of(RstStreamFrame, stream_id)]

    @property
    def client_settings(self) -> dict[int, int]:
        """The client's first (non-ACK) SETTINGS frame, as a dict."""
        for frame in self.frames_of(SettingsFrame):
            if "ACK" not in frame.flags:
                return dict(frame.settings)
        return {}

    def pending_body(self, stream_id: int) -> int:
        """Body bytes queued on ``stream_id`` that wait for flow-control window."""
        outbox = self._outboxes.get(stream_id)
        return outbox.pending_body if outbox is not None else 0

    def send_window(self, stream_id: int) -> int:
        """How many bytes the client's windows let the peer send on ``stream_id`` now."""
        return self.h2.local_flow_control_window(stream_id)

    # Scripted moves. Each queues bytes; they reach the client on a later
    # loop iteration, in the order the moves were made.

    def send_preface(self) -> None:
        """Send the server's SETTINGS, exactly ``self.settings``; automatic unless ``send_preface=False``."""
        if self.preface_sent:
            raise RuntimeError("the server preface was already sent")
        self.preface_sent = True
        self.h2.initiate_connection()
        # h2 would list all its settings; a test should see only its own.
        self.h2.clear_outbound_data_buffer()
        frame = SettingsFrame(0)
        for code, value in self.settings.items():
            frame.settings[code] = value
        self.settings_sent += 1
        self._queue(frame.serialize())

    def update_settings(self, settings: Mapping[int, int]) -> None:
        """Send a new SETTINGS frame (e.g. change MAX_CONCURRENT_STREAMS mid-connection)."""
        self.settings.update(settings)
        self.settings_sent += 1
        self.h2.update_settings(dict(settings))
        self._pump()

    def send_headers(self, stream_id: int, headers: HeaderPairs, *, end_stream: bool = False) -> None:
        """Queue a header block on ``stream_id`` (after anything already queued there)."""
        self._outbox(stream_id).items.append(("headers", _encode_headers(headers), end_stream))
        self._push(stream_id)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue DATA; it leaves as the client's windows allow (see :meth:`pending_body`)."""
        self._outbox(stream_id).items.append(("data", bytes(data), end_stream))
        self._push(stream_id)

    def send_trailers(self, stream_id: int, trailers: HeaderPairs) -> None:
        """Queue trailers, which end the stream."""
        self.send_headers(stream_id, trailers, end_stream=True)

    def end_stream(self, stream_id: int) -> None:
        """Queue an empty DATA frame with END_STREAM."""
        self.send_data(stream_id, b"", end_stream=True)

    def respond(
        self,
        stream_id: int,
        status: int = 200,
        headers: HeaderPairs | None = None,
        body: bytes = b"",
        trailers: HeaderPairs | None = None,
    ) -> None:
        """Queue a whole response: headers, then the body as windows allow, then trailers."""
        request = self.requests.get(stream_id)
        if request is not None:
            request.answered = True
        block = [(b":status", str(status).encode("ascii")), *_encode_headers(headers)]
        has_trailers = trailers is not None
        self.send_headers(stream_id, block, end_stream=not body and not has_trailers)
        if body:
            self.send_data(stream_id, body, end_stream=not has_trailers)
        if trailers is not None:
            self.send_trailers(stream_id, trailers)

    def reset(self, stream_id: int, error_code: ErrorCodes | int = ErrorCodes.CANCEL) -> None:
        """Send RST_STREAM now, dropping whatever was still queued on the stream."""
        request = self.requests.get(stream_id)
        if request is not None:
            request.answered = True
        self._outboxes.pop(stream_id, None)
        self.h2.reset_stream(stream_id, error_code)
        self._pump()

    def goaway(
        self, last_stream_id: int | None = None, error_code: ErrorCodes | int = ErrorCodes.NO_ERROR, debug: bytes = b""
    ) -> None:
        """Send GOAWAY; ``last_stream_id`` defaults to the highest stream received.

        The frame is made by hand so the peer's own state machine stays open
        and the test can go on finishing streams up to ``last_stream_id``,
        as a server shutting down gracefully does.
        """
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        frame.error_code = int(error_code)
        frame.additional_data = debug
        self.send_frame(frame)

    def window_update(self, stream_id: int, increment: int) -> None:
        """Give the client ``increment`` more bytes of send window on ``stream_id`` (0: the connection)."""
        self.h2.increment_flow_control_window(increment, stream_id or None)
        self._pump()

    def ping(self, opaque_data: bytes = b"\0" * 8) -> None:
        self.h2.ping(opaque_data)
        self._pump()

    def send_frame(self, *frames: Frame) -> None:
        """Send hand-made frames as they are, bypassing the peer's state machine.

        For malformed or out-of-order input: the peer's h2 does not know
        about them, so later moves on the same stream may be refused.
        """
        self._pump()
        self._queue(b"".join(frame.serialize() for frame in frames))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are, after anything already queued."""
        self._pump()
        self._queue(bytes(data))

    def stall(self) -> None:
        """Stop answering: keep receiving, but hold every byte for the client (even SETTINGS ACK)."""
        self.stalled = True

    def unstall(self) -> None:
        """Release what was held by :meth:`stall` and answer again."""
        self.stalled = False
        self._schedule_flush()

    def disconnect(self, exc: Exception | None = None, *, discard_pending: bool = False) -> None:
        """The server goes away: the client gets ``connection_lost(exc)``.

        ``exc=None`` is a clean close (FIN); an exception such as
        ``ConnectionResetError()`` is a reset. Bytes already queued reach the
        client first unless ``discard_pending`` (data lost in flight).
        """
        transport = self.transport
        if transport is None or transport.lost:
            return
        if discard_pending:
            self._out.clear()
        else:
            self._flush_now()
        transport.peer_gone = True
        transport._loop.call_soon(transport._lose, exc)

    def vanish(self, exc: Exception | None = None) -> None:
        """The server disappears mid-flight: a connection reset, pending bytes lost."""
        if exc is None:
            exc = ConnectionResetError("connection reset by peer")
        self.disconnect(exc, discard_pending=True)

    def pause_client_writing(self) -> None:
        """Tell the client its writes are backing up (``protocol.pause_writing()``)."""
        if self.client is not None:
            self.client.pause_writing()

    def resume_client_writing(self) -> None:
        if self.client is not None:
            self.client.resume_writing()

    # Automatic answers.

    def auto_respond(self, handler: Handler | None) -> None:
        """Answer every complete request with ``handler``; None goes back to manual mode.

        Requests already complete and unanswered are answered at once.
        """
        self.handler = handler
        if handler is not None:
            for request in list(self.requests.values()):
                if request.complete:
                    self._dispatch(request)

    def _dispatch(self, request: PeerRequest) -> None:
        handler = self.handler
        if handler is None or request.answered or request.reset_code is not None:
            return
        request.answered = True
        try:
            result = handler(request)
        except Exception as exc:
            self.errors.append(exc)
            self.reset(request.stream_id, ErrorCodes.INTERNAL_ERROR)
            return
        if inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(self._answer_later(request, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._answer(request, result)

    async def _answer_later(self, request: PeerRequest, pending: Awaitable[Reply | None]) -> None:
        try:
            reply = await pending
        except Exception as exc:
            self.errors.append(exc)
            reply = Reply(reset=ErrorCodes.INTERNAL_ERROR)
        if self.connected and request.reset_code is None:
            try:
                self._answer(request, reply)
            except Exception as exc:
                self.errors.append(exc)

    def _answer(self, request: PeerRequest, reply: Reply | None) -> None:
        if reply is None:
            request.answered = False
            return
        if reply.reset is not None:
            self.reset(request.stream_id, reply.reset)
        else:
            self.respond(request.stream_id, reply.status, reply.headers, reply.body, reply.trailers)

    # Sending to the client.

    def _outbox(self, stream_id: int) -> _Outbox:
        outbox = self._outboxes.get(stream_id)
        if outbox is None:
            outbox = self._outboxes[stream_id] = _Outbox()
        return outbox

    def _push_all(self) -> None:
        for stream_id in list(self._outboxes):
            self._push(stream_id)

    def _push(self, stream_id: int) -> None:
        """Send what is queued on ``stream_id`` as far as flow control allows."""
        outbox = self._outboxes.get(stream_id)
        if outbox is None:
            return
        items = outbox.items
        try:
            while items:
                kind, payload, end_stream = items[0]
                if kind == "headers":
                    self.h2.send_headers(stream_id, payload, end_stream=end_stream)
                    items.popleft()
                    continue
                if not payload:
                    if end_stream:
                        self.h2.end_stream(stream_id)
                    items.popleft()
                    continue
                size = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size, len(payload))
                if size <= 0:
                    break
                last = size == len(payload)
                self.h2.send_data(stream_id, payload[:size], end_stream=end_stream and last)
                if last:
                    items.popleft()
                else:
                    items[0] = (kind, payload[size:], end_stream)
        except h2.exceptions.StreamClosedError:
            # The client reset the stream: what was queued goes nowhere.
            items.clear()
        if not items:
            self._outboxes.pop(stream_id, None)
        self._pump()

    def _pump(self) -> None:
        """Move what h2 has to send into the outgoing buffer."""
        data = self.h2.data_to_send()
        if data:
            self._queue(data)

    def _queue(self, data: bytes) -> None:
        self._out += data
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self.transport is None:
            return
        self._flush_scheduled = True
        self.transport._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._flush_now()

    def _flush_now(self) -> None:
        transport = self.transport
        if transport is None or self.stalled or not self._out or transport.peer_gone:
            return
        data, self._out = bytes(self._out), bytearray()
        size = self.max_read_size or len(data)
        for start in range(0, len(data), size):
            # Later pieces are delivered on later iterations, like separate reads.
            transport._loop.call_soon(transport._deliver, data[start : start + size])


class MockServer:
    """An origin whose every connection is a :class:`ScriptedPeer`.

    Pass ``server.connector`` to ``Pool(connector=...)``; each dial appends a
    peer to :attr:`peers`. Keyword arguments are those of
    :class:`ScriptedPeer`; ``setup`` is called with each new peer before
    the client sees it, to script it per connection. Set ``connect_error``
    to an ``OSError`` to make dials fail, ``connect_delay`` to slow them.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        settings: Mapping[int, int] | None = None,
        alpn: str | None = "h2",
        tls: bool = True,
        ack_data: bool = True,
        send_preface: bool = True,
        max_read_size: int | None = None,
        setup: Callable[[ScriptedPeer], None] | None = None,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.alpn = alpn
        self.tls = tls
        self.ack_data = ack_data
        self.send_preface = send_preface
        self.max_read_size = max_read_size
        self.setup = setup
        self.connect_error: BaseException | None = None
        self.connect_delay = 0.0
        self.peers: list[ScriptedPeer] = []
        #: The client connections, in dial order (one per peer).
        self.connections: list[Connection] = []
        self._claimed = 0
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<MockServer peers={len(self.peers)}>"

    async def connector(self, conn: Connection) -> None:
        """The ``Pool(connector=...)`` hook: attach ``conn`` to a new peer."""
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        if self.connect_error is not None:
            raise self.connect_error
        peer = ScriptedPeer(
            settings=self.settings,
            alpn=self.alpn,
            tls=self.tls,
            ack_data=self.ack_data,
            send_preface=self.send_preface,
            handler=self.handler,
            max_read_size=self.max_read_size,
        )
        if self.setup is not None:
            self.setup(peer)
        self.peers.append(peer)
        self.connections.append(conn)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        peer.attach(conn)

    async def next_peer(self, timeout: float = DEFAULT_TIMEOUT) -> ScriptedPeer:
        """The next peer not yet returned by this method, once the pool has dialled it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while self._claimed >= len(self.peers):
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError(f"{self!r}: no new connection within {timeout} s") from None
        self._claimed += 1
        return self.peers[self._claimed - 1]

    @property
    def errors(self) -> list[BaseException]:
        """Every peer's :attr:`ScriptedPeer.errors`."""
        return [error for peer in self.peers for error in peer.errors]

    def assert_slots_consistent(self) -> None:
        """:func:`assert_slots_consistent` for every connection this server has seen."""
        assert_slots_consistent(*self.connections)


def assert_slots_consistent(*connections: Connection) -> None:
    """Check that each connection's slot ledger agrees with h2's own stream states.

    h2pool moves a stream's slot exactly where h2's stream state changes. A
    drift is how pools end up refusing requests on a connection with free
    streams, or overrunning a server's limit, so after the traffic has
    settled this checks, on a live connection, that ``slots.open`` equals
    both the streams h2's state machines hold open and the streams the
    connection tracks, and that no stream was given up while h2 still had
    it open (except those a GOAWAY refused); on a failed connection, that
    everything was released.
    """
    for conn in connections:
        ledger = conn.slots
        tracked = len(conn._streams)
        if ledger.reserved < 0 or ledger.open < 0:
            raise AssertionError(f"{conn!r}: negative slot counts")
        if conn.error is not None:
            if ledger.open != 0 or tracked != 0:
                raise AssertionError(f"{conn!r} failed ({conn.error!r}) but holds {ledger.open} open slots")
            continue
        machine = conn._h2
        # Counted stream by stream: h2pool's ClientH2Connection answers
        # open_outbound_streams from the ledger itself.
        h2_open = sum(1 for stream_id, stream in machine.streams.items() if stream_id % 2 and stream.open)
        if not ledger.open == h2_open == tracked:
            raise AssertionError(
                f"{conn!r}: slot ledger says {ledger.open} open streams, h2's stream states {h2_open}, "
                f"{tracked} streams tracked"
            )
        refused_above = conn.goaway.last_stream_id if conn.goaway is not None else None
        for stream_id, closed_by in machine._closed_streams.items():
            if stream_id % 2 and closed_by is None and (refused_above is None or stream_id <= refused_above):
                raise AssertionError(f"{conn!r}: stream {stream_id}'s slot was released while h2 had it open")
