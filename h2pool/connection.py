"""One HTTP/2 connection: an ``asyncio.Protocol`` driving h2's state machine.

Bytes flow in one direction each way:

* **In.** ``data_received`` feeds h2 and dispatches every event to its stream
  synchronously, with no awaits, so PING, SETTINGS and GOAWAY are answered
  even while no task reads a response. Received DATA is buffered on the
  stream and acknowledged to the peer only when the consumer takes it.
* **Out.** Every send goes into h2's buffer and a flush is scheduled with
  ``call_soon``: all the requests, acknowledgements and window updates of one
  event-loop iteration leave in one ``transport.write`` (once per request
  costs about a quarter of the throughput and doubles the server's CPU).
  A complete request alone on its connection is written at once: nothing
  would share its write. Large uploads flush early and respect
  ``pause_writing``.

Stream slots are counted in :class:`~h2pool.slots.SlotLedger`, moved at the
exact points where h2's stream states change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hyperframe.exceptions
from h2.errors import ErrorCodes

from .certificates import CertificateNames
from .client_h2 import ClientH2Connection
from .config import MAX_WINDOW
from .deadlines import Deadlines
from .exceptions import (
    AcquireTimeout,
    ALPNError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionTerminated,
    ConnectTimeout,
    H2PoolError,
    ProtocolError,
    StreamReset,
    WriteTimeout,
    not_processed,
)
from .frame_trace import ConnectionTrace
from .headers import RawHeaders, ResponseHead, parse_response_head, parse_trailers
from .hooks import ConnectionInfo, PoolHooks, call_hook
from .priority import DEFAULT_URGENCY
from .slots import SlotLedger
from .stream import StreamState
from .windows import MIN_CONNECTION_WINDOW, BdpEstimator, WindowBudget

if TYPE_CHECKING:
    from .config import PoolConfig
    from .origin import Origin

logger = logging.getLogger("h2pool")

#: Distinct response header blocks remembered per connection.
HEAD_CACHE_ENTRIES = 16

#: Bytes of answers (PING and SETTINGS ACKs, window updates) that may pile
#: up in the transport while the peer reads nothing.
MAX_ANSWERS_WHILE_PAUSED = 128 * 1024

#: The payload of the PINGs that sample the bandwidth-delay product; health
#: PINGs count up from 1 and never take this value in practice.
_BDP_PING = b"h2pl-bdp"

#: RFC 9218 §2.1; h2 has no name for it, and sends unknown settings as given.
SETTINGS_NO_RFC7540_PRIORITIES = 0x9

#: Reads to wait for a TLS 1.3 session ticket before assuming none comes.
_SESSION_READS = 3

#: Upload bytes buffered in h2 before a flush is forced rather than waiting
#: for the next loop iteration, so ``pause_writing`` can push back.
FLUSH_THRESHOLD = 256 * 1024

_H2_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    # Outbound headers are validated by h2pool.headers before they get here,
    # and inbound ones there too, once per distinct header block (see
    # Connection._on_response): h2's per-field validation pipeline costs more
    # than the rest of the response's handling.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)

#: What h2 raises on bytes that break the protocol.
PEER_DATA_ERRORS = (h2.exceptions.ProtocolError, hyperframe.exceptions.HyperframeError, hpack.HPACKError)


class ConnectionListener(Protocol):
    """What a connection tells its pool. Every call is synchronous."""

    def on_settled(self, conn: Connection, peer_limit: int) -> None:
        """The peer's SETTINGS arrived or changed its stream limit."""

    def on_capacity(self, conn: Connection) -> None:
        """A slot was freed or a stream finished."""

    def on_draining(self, conn: Connection) -> None:
        """No new streams here (GOAWAY, ``max_lifetime``); close once drained."""

    def on_closed(self, conn: Connection) -> None:
        """The connection is gone."""

    def on_stream_error(self, conn: Connection, error: H2PoolError) -> None:
        """A stream on ``conn`` ended in ``error`` (counted per origin)."""


class Connection(asyncio.Protocol):
    """A client HTTP/2 connection to one origin."""

    def __init__(
        self,
        origin: Origin,
        config: PoolConfig,
        listener: ConnectionListener,
        peer_limit: int,
        budget: WindowBudget | None = None,
        hooks: PoolHooks | None = None,
    ) -> None:
        self.origin = origin
        self.origin_str = str(origin)
        self.info = ConnectionInfo(self.origin_str)
        self.hooks = hooks
        self._trace = ConnectionTrace.if_enabled(f"#{self.info.id}")
        self.config = config
        self.listener = listener
        self.slots = SlotLedger(config.max_concurrent_streams, peer_limit)
        self.loop = asyncio.get_running_loop()
        self._dialled_at = self.loop.time()
        #: Resolves when TLS, ALPN and the client preface are done.
        self.ready: asyncio.Future[None] = self.loop.create_future()
        #: Resolves when the peer's first SETTINGS have arrived.
        self.settled: asyncio.Future[None] = self.loop.create_future()
        #: Whether the TLS handshake resumed an offered session.
        self.tls_resumed = False
        #: The names the server's verified certificate covers (connection
        #: coalescing); None for h2c or an unverified certificate.
        self.certificate: CertificateNames | None = None
        self._session_sink: Callable[[Connection, ssl.SSLSession], None] | None = None
        self._session_reads = 0
        #: Set once, when the connection can carry nothing more.
        self.error: H2PoolError | None = None
        self.goaway: ConnectionTerminated | None = None
        #: ``loop.time()`` when the last slot was released; None while busy.
        self.idle_since: float | None = None
        self.transport: asyncio.Transport | None = None
        self._h2 = ClientH2Connection(_H2_CONFIG, self.slots, config.max_header_list_size)
        self._streams: dict[int, StreamState] = {}
        self._heads: dict[tuple[tuple[bytes, bytes], ...], ResponseHead] = {}
        #: Received payload bytes not yet taken by consumers, on all streams,
        #: including streams already ended whose data waits to be read.
        self.buffered = 0
        self._flush_scheduled = False
        self._unflushed = 0
        self._write_paused = False
        #: Bytes other than request bodies written while the socket was
        #: paused: answers (PING and SETTINGS ACKs), window updates, resets.
        self._answers_while_paused = 0
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._open_waiters: deque[asyncio.Future[None]] = deque()
        #: Writes handed to the transport; a stream opened after the last
        #: one was never seen by the server.
        self._writes = 0
        #: ``loop.time()`` of the last bytes received: PING only when quiet.
        self.last_read = self.loop.time()
        #: Round trip of the last answered PING, in seconds.
        self.ping_rtt: float | None = None
        #: When our preface SETTINGS left, until their ACK (see _on_settings_acked).
        self._settings_sent_at: float | None = None
        self._ping_payload: bytes | None = None
        self._ping_sent_at = 0.0
        self._pings = 0
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: Timeouts of the streams' waits for response data and send window.
        self.deadlines = Deadlines(self.loop)
        #: The pool's receive-window budget, and this connection's share of it.
        self._budget = budget if budget is not None else WindowBudget(config.receive_buffer_budget)
        self.receive_window = 0
        self._bdp = (
            BdpEstimator(config.initial_stream_window, max(config.max_stream_window, config.initial_stream_window))
            if config.adaptive_window
            else None
        )
        self._configure_h2()

    def _configure_h2(self) -> None:
        codes = h2.settings.SettingCodes
        config = self.config
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.INITIAL_WINDOW_SIZE: config.initial_stream_window,
                codes.MAX_FRAME_SIZE: config.max_frame_size,
                codes.HEADER_TABLE_SIZE: config.header_table_size,
                codes.MAX_HEADER_LIST_SIZE: config.max_header_list_size,
                # We signal priorities with RFC 9218's header, never with
                # RFC 7540's PRIORITY frames: saying so lets a server skip
                # building a dependency tree for us (RFC 9218 §2.1).
                cast(h2.settings.SettingCodes, SETTINGS_NO_RFC7540_PRIORITIES): 1,
            },
        )
        # Settings given as initial values count as acknowledged, so h2 would
        # not copy them to the decoder and frame reader itself.
        self._h2.max_inbound_frame_size = config.max_frame_size
        self._h2.decoder.max_allowed_table_size = config.header_table_size

    def __repr__(self) -> str:
        return f"<Connection {self.origin_str} open={self.slots.open} reserved={self.slots.reserved}>"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.error is not None:
            # Closed while TLS was still being set up (pool closed, connect
            # timeout): the handshake can complete in the same loop iteration,
            # before the dial task sees its cancellation. Nothing may use it.
            transport.close()
            return
        self.transport = transport
        info = self.info
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            info.remote_address = peer[0]
        if self.origin.scheme == "https":
            ssl_object = transport.get_extra_info("ssl_object")
            selected = None
            if ssl_object is not None:
                selected = ssl_object.selected_alpn_protocol()
                self.tls_resumed = info.tls_resumed = bool(getattr(ssl_object, "session_reused", False))
                info.tls_version = ssl_object.version()
                cipher = ssl_object.cipher()
                info.tls_cipher = cipher[0] if cipher is not None else None
                if self.config.coalesce_connections:
                    self.certificate = CertificateNames.from_peercert(ssl_object.getpeercert())
            if selected != "h2":
                self._fail(
                    ALPNError(
                        f"server selected {selected!r} in ALPN, not 'h2': it does not offer HTTP/2",
                        origin=self.origin_str,
                    )
                )
                return
        self._h2.initiate_connection()
        self._settings_sent_at = self.loop.time()
        self.receive_window = self._budget.grant(self.config.connection_window, floor=MIN_CONNECTION_WINDOW)
        if self.receive_window > MIN_CONNECTION_WINDOW:
            self._h2.increment_flow_control_window(self.receive_window - MIN_CONNECTION_WINDOW)
        self._flush()
        self.ready.set_result(None)
        seconds = self.loop.time() - self._dialled_at
        logger.debug("connection #%d to %s (%s) open after %.1f ms", info.id, self.origin_str, peer, seconds * 1e3)
        if self.hooks is not None:
            call_hook(self.hooks, "connection_opened", info, seconds)
        self._set_timer("keepalive", self.config.ping_interval, self._check_quiet)
        self._set_timer("settings", self.config.connect_timeout, self._settings_missing)
        if self.config.max_lifetime is not None:
            self._set_timer("lifetime", self.config.max_lifetime, self.retire)

    def data_received(self, data: bytes | bytearray) -> None:
        """Feed h2 and dispatch its events.

        Our TLS layer passes each read as a fresh ``Plaintext`` it never
        touches again, which h2's frame buffer takes over when empty; other
        data is copied.
        """
        self.last_read = self.loop.time()
        if self._flooded():
            return
        if self._session_sink is not None:
            self._offer_session()
        if self._trace is not None:
            self._trace.received(data)
        try:
            events = self._h2.receive_data(data)
        except PEER_DATA_ERRORS as exc:
            # h2 has queued a GOAWAY naming the error; send it before closing.
            self._flush()
            self._fail(ProtocolError(f"server broke the HTTP/2 protocol: {exc}", origin=self.origin_str))
            return
        try:
            for event in events:
                handler = _HANDLERS.get(type(event))
                if handler is not None:
                    handler(self, event)
        except Exception as exc:
            # A bug of ours must not strand the rest of this read's events
            # and leave their requests waiting out a timeout.
            logger.exception("error dispatching events from %s", self.origin_str)
            self._abort(ProtocolError(f"internal error handling the server's frames: {exc!r}", origin=self.origin_str))
            return
        # Answers (SETTINGS and PING ACKs, WINDOW_UPDATEs) wait for this
        # iteration's requests to share their write; a response alone needs none.
        if self._h2.has_data_to_send:
            self._schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.goaway is not None:
            self._fail(self.goaway)
        elif exc is None:
            self._fail(ConnectionLost("server closed the connection", origin=self.origin_str))
        else:
            self._fail(ConnectionLost(f"connection lost: {exc}", origin=self.origin_str))

    def pause_writing(self) -> None:
        self._write_paused = True
        self._answers_while_paused = 0
        # A socket that never drains would hold PINGs and resets back too
        # (golang/go#48810): give up on the connection instead.
        self._set_timer("write_stall", self.config.write_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._cancel_timer("write_stall")
        self._wake_drain_waiters()

    # Events from h2, dispatched synchronously.

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is None:
            return
        # Servers send a few distinct header blocks over and over; each is
        # validated and converted once per connection.
        key = tuple(event.headers or ())
        head = self._heads.get(key)
        if head is None:
            try:
                head = parse_response_head(key, origin=self.origin_str, stream_id=stream.stream_id)
            except ProtocolError as exc:
                self._malformed(stream, exc)
                return
            if len(self._heads) >= HEAD_CACHE_ENTRIES:
                self._heads.clear()
            self._heads[key] = head
        stream.on_headers(head)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id: int = event.stream_id
        flow: int = event.flow_controlled_length
        stream = self._streams.get(stream_id)
        if stream is not None and stream.error is None and event.data:
            stream.on_data(event.data, flow)
            self.buffered += len(event.data)
            if self._bdp is not None and self._bdp.on_data(flow):
                self._bdp.pinged(self.loop.time())
                self._h2.ping(_BDP_PING)
        elif flow:
            # Nobody will read it: give the window back at once.
            self._h2.acknowledge_received_data(flow, stream_id)

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is None:
            return
        try:
            trailers = parse_trailers(event.headers or (), origin=self.origin_str, stream_id=stream.stream_id)
        except ProtocolError as exc:
            self._malformed(stream, exc)
            return
        stream.on_trailers(trailers)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.on_end()
            if stream.local_closed:
                self._release_slot(stream)

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.reset = True
            if event.remote_reset:
                error = _stream_reset(event.error_code, self.origin_str, stream.stream_id)
            else:
                # h2 reset the stream itself: the server broke flow control on it.
                error = ProtocolError(
                    f"server broke the HTTP/2 protocol on this stream (reset with {event.error_code!r})",
                    origin=self.origin_str,
                    stream_id=stream.stream_id,
                )
            self.fail_stream(stream, error)
            self._release_slot(stream)

    def _on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.wake_sender()
        else:
            self._wake_all_senders()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if not self.settled.done():
            self.settled.set_result(None)
            self._cancel_timer("settings")
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._wake_all_senders()
        self.listener.on_settled(self, self._h2.remote_settings.max_concurrent_streams)
        self._wake_open_waiters()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id or 0
        code = event.error_code if event.error_code is not None else ErrorCodes.NO_ERROR
        detail = event.additional_data.decode("utf-8", "replace") if event.additional_data else ""
        self.goaway = ConnectionTerminated(code, last, origin=self.origin_str, detail=detail)
        logger.debug("connection #%d to %s: %s", self.info.id, self.origin_str, self.goaway)
        if self.hooks is not None:
            call_hook(self.hooks, "goaway", self.info, self.goaway)
        self.listener.on_draining(self)
        # Streams above last_stream_id were never processed: they end here.
        for stream in [s for s in self._streams.values() if s.stream_id > last]:
            stream.reset = True
            self.fail_stream(stream, not_processed(self.goaway.for_stream(stream.stream_id)))
            self._release_slot(stream)
        self._wake_open_waiters()

    def _on_settings_acked(self, event: h2.events.SettingsAcknowledged) -> None:
        # The first ACK answers our preface: a round trip to seed the window
        # sampler with before its first sample.
        sent_at, self._settings_sent_at = self._settings_sent_at, None
        if sent_at is not None and self._bdp is not None:
            self._bdp.seed_rtt(self.loop.time() - sent_at)

    def _on_ping_ack(self, event: h2.events.PingAckReceived) -> None:
        if event.ping_data == _BDP_PING and self._bdp is not None:
            grown = self._bdp.on_ack(self.loop.time())
            if grown is not None:
                self._grow_windows(grown)
            return
        if event.ping_data != self._ping_payload:
            return
        self._cancel_timer("ping")
        self._ping_payload = None
        self.ping_rtt = self.loop.time() - self._ping_sent_at
        if self.hooks is not None:
            call_hook(self.hooks, "ping_rtt", self.info, self.ping_rtt)
        if self.slots.degraded:
            self.slots.degraded = False
            self.listener.on_capacity(self)

    def _grow_windows(self, stream_window: int) -> None:
        """The window limited a transfer: raise it for streams and, within budget, for the connection."""
        self._h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
        # Room for two streams at the new size, so one transfer is never
        # held back by the connection window alone.
        wanted = min(2 * stream_window, MAX_WINDOW) - self.receive_window
        if wanted > 0:
            extra = self._budget.grant(wanted)
            if extra:
                self.receive_window += extra
                self._h2.increment_flow_control_window(extra)
        self._schedule_flush()

    # Health.

    def ping(self) -> None:
        """Send a PING unless one is outstanding; no ACK within ``ping_timeout`` closes the connection."""
        if self._ping_payload is not None or self.error is not None or self.transport is None:
            return
        self._pings += 1
        self._ping_payload = self._pings.to_bytes(8, "big")
        self._ping_sent_at = self.loop.time()
        self._h2.ping(self._ping_payload)
        self._flush()
        self._set_timer("ping", self.config.ping_timeout, self._ping_lost)

    def health_check(self) -> None:
        """A stream saw nothing for ``read_timeout``: take no new streams until a PING is answered."""
        if self.error is not None:
            return
        self.slots.degraded = True
        self.ping()

    def retire(self) -> None:
        """Take no new streams; close once the open ones finish (``max_lifetime``)."""
        if self.error is None and self.slots.accepting:
            self.listener.on_draining(self)

    def _check_quiet(self) -> None:
        now = self.loop.time()
        due = self.last_read + self.config.ping_interval
        if now >= due:
            self.ping()
            due = now + self.config.ping_interval
        self._set_timer("keepalive", due - now, self._check_quiet)

    def _ping_lost(self) -> None:
        timeout = self.config.ping_timeout
        self._abort(ConnectionLost(f"no PING ACK within {timeout} s: the connection is dead", origin=self.origin_str))

    def _settings_missing(self) -> None:
        # The server's preface starts with SETTINGS (RFC 9113 §3.4): without
        # them the connection never finished setting up.
        timeout = self.config.connect_timeout
        self._abort(ConnectTimeout(f"the server sent no SETTINGS within {timeout} s", origin=self.origin_str))

    def _write_stalled(self) -> None:
        timeout = self.config.write_timeout
        self._abort(WriteTimeout(f"the socket did not drain within {timeout} s", origin=self.origin_str))

    def _abort(self, error: H2PoolError) -> None:
        """Fail with ``error`` and drop the socket without flushing: the peer is not reading."""
        if self.transport is not None:
            # Before _fail: its close() would start a TLS shutdown towards a
            # peer that is not reading.
            self.transport.abort()
        self._fail(error)

    def _set_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer(name)
        if self.error is None:
            self._timers[name] = self.loop.call_later(delay, callback)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # TLS sessions.

    def watch_tls_session(self, sink: Callable[[Connection, ssl.SSLSession], None]) -> None:
        """Hand this connection's TLS session to ``sink`` once it can be resumed.

        TLS 1.2 sessions can be as soon as the handshake is done; TLS 1.3
        tickets arrive after it, so they are looked for as data arrives.
        """
        self._session_sink = sink
        ssl_object = self._ssl_object()
        if ssl_object is not None and ssl_object.version() == "TLSv1.2":
            self._offer_session()

    def _ssl_object(self) -> ssl.SSLObject | None:
        transport = self.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    def _offer_session(self) -> None:
        sink = self._session_sink
        ssl_object = self._ssl_object()
        if sink is None or ssl_object is None:
            return
        # Each read of SSLObject.session leaks a copy of the session on
        # Python 3.11 and 3.12 (cpython gh-116810): read it only a few times,
        # and only for connections that did not resume.
        self._session_reads += 1
        session = ssl_object.session
        if session is not None and (session.has_ticket or ssl_object.version() == "TLSv1.2"):
            self._session_sink = None
            sink(self, session)
        elif self._session_reads >= _SESSION_READS:
            # No ticket came with the first reads: the server sends none.
            self._session_sink = None

    # Used by handles.

    async def wait_settled(self) -> None:
        """Wait for set-up and the peer's first SETTINGS (for pre-warming)."""
        await self.wait_ready()
        if not self.settled.done():
            # Its failure is the connection's error, raised below.
            with contextlib.suppress(H2PoolError):
                await asyncio.shield(self.settled)
        if self.error is not None:
            raise self.error.for_stream(None)

    async def wait_ready(self) -> None:
        """Wait for the connection to be set up; raise its error if it failed or has ended since.

        The error says the request was not processed: nothing of it was sent.
        A slot granted just before a GOAWAY closed the connection lands here.
        """
        if not self.ready.done():
            # Shielded: one waiter's cancellation must not cancel the set-up
            # for all. Its failure is the connection's error, raised below.
            with contextlib.suppress(H2PoolError):
                await asyncio.shield(self.ready)
        if self.error is not None:
            raise not_processed(self.error.for_stream(None))

    async def open_stream(
        self, headers: RawHeaders, end_stream: bool, wait_timeout: float, urgency: int = DEFAULT_URGENCY
    ) -> StreamState:
        """Send HEADERS on a reserved slot and return the new stream.

        Waits while the peer's limit is below the open streams (it may have
        lowered MAX_CONCURRENT_STREAMS after the slot was reserved).
        """
        while True:
            # Nothing of this request was sent: whatever ends the connection
            # now leaves it safe to replay elsewhere.
            if self.error is not None:
                raise not_processed(self.error.for_stream(None))
            if self.goaway is not None:
                raise not_processed(self.goaway.for_stream(None))
            if self.slots.can_open():
                break
            await self._wait_open_room(wait_timeout)
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.goaway = ConnectionTerminated(
                ErrorCodes.NO_ERROR, 2**31 - 1, origin=self.origin_str, detail="stream IDs exhausted"
            )
            self.listener.on_draining(self)
            raise not_processed(self.goaway.for_stream(None)) from None
        self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        stream = StreamState(stream_id, self._writes, urgency)
        stream.local_closed = end_stream
        self._streams[stream_id] = stream
        self.slots.opened()
        if self.hooks is not None:
            # Before the write, which may end the connection (and close the stream) at once.
            call_hook(self.hooks, "stream_opened", self.info, stream_id)
        if end_stream and self.slots.open == 1:
            # A lone complete request: no other request of this iteration
            # would share the write, and waiting for the next one is latency.
            self._flush()
        else:
            self._schedule_flush()
        return stream

    async def send_data(self, stream: StreamState, data: bytes, end_stream: bool) -> None:
        """Send ``data`` within the flow-control windows, waiting for WINDOW_UPDATE as needed."""
        stream_id = stream.stream_id
        offset, total = 0, len(data)
        while offset < total:
            self._check_sendable(stream)
            size = min(
                self._h2.local_flow_control_window(stream_id),
                self._h2.max_outbound_frame_size,
                total - offset,
            )
            if size <= 0:
                await stream.wait_sendable(
                    self.deadlines, self.config.write_timeout, partial(self._send_timeout, stream)
                )
                continue
            last = end_stream and offset + size == total
            self._h2.send_data(stream_id, data[offset : offset + size], end_stream=last)
            offset += size
            self._unflushed += size
            if last:
                self._local_end(stream)
            if self._unflushed >= FLUSH_THRESHOLD:
                self._flush()
            else:
                self._schedule_flush()
            if self._write_paused:
                await self._wait_drain()
        if total == 0 and end_stream:
            self.end_stream(stream)

    def end_stream(self, stream: StreamState) -> None:
        self._check_sendable(stream)
        self._h2.end_stream(stream.stream_id)
        self._local_end(stream)
        self._schedule_flush()

    def send_trailers(self, stream: StreamState, trailers: RawHeaders) -> None:
        self._check_sendable(stream)
        self._h2.send_headers(stream.stream_id, trailers, end_stream=True)
        self._local_end(stream)
        self._schedule_flush()

    def consumed(self, stream: StreamState, size: int, flow_controlled_length: int) -> None:
        """The consumer took ``size`` bytes of data: hand their window back to the peer."""
        self.buffered -= size
        bdp = self._bdp
        if bdp is not None and bdp.sampling:
            grown = bdp.on_consumed(flow_controlled_length, self.loop.time())
            if grown is not None and self.error is None:
                self._grow_windows(grown)
        self._acknowledge(stream, flow_controlled_length)

    def finish(self, stream: StreamState, error_code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """The handle is done with ``stream``: reset it if still open, return unread window."""
        if not stream.closed:
            stream.reset = True
            # A task still waiting on the stream must not wait out a timeout.
            stream.wake()
            # h2 may have closed the stream already: its END_STREAM can sit in
            # the same batch of events, not yet dispatched.
            h2_stream = self._h2.streams.get(stream.stream_id)
            if self.error is None and h2_stream is not None and not h2_stream.closed:
                self._h2.reset_stream(stream.stream_id, error_code)
                self._schedule_flush()
            self._release_slot(stream)
        _, size, unread = stream.take_all()
        self.buffered -= size
        self._acknowledge(stream, unread)

    def _acknowledge(self, stream: StreamState, flow_controlled_length: int) -> None:
        """Give the window of ``flow_controlled_length`` bytes of ``stream`` back to the peer."""
        if flow_controlled_length and self.error is None:
            self._h2.acknowledge_received_data(flow_controlled_length, stream.stream_id)
            # Small acknowledgements only add up in h2 until a WINDOW_UPDATE
            # is due: no flush (a loop callback per response) before then.
            if self._h2.has_data_to_send:
                self._schedule_flush()

    def unreserve(self) -> None:
        """A handle gives back a slot it never used."""
        self.slots.unreserve()
        self.listener.on_capacity(self)

    def close_drained(self) -> None:
        """Close a connection that took no new streams and has none left.

        The reason stays the GOAWAY that started the drain, if one did, so a
        GOAWAY with an error code is reported as such.
        """
        self.close(self.goaway or ConnectionClosed("connection drained and closed", origin=self.origin_str))

    def close(self, error: H2PoolError) -> None:
        """Close now: GOAWAY to the peer, ``error`` to every stream still running."""
        if self.transport is not None and self.error is None and self.ready.done():
            self._h2.close_connection()
            self._flush()
        self._fail(error)

    # Internals.

    def fail_stream(self, stream: StreamState, error: H2PoolError) -> None:
        """``stream`` cannot go on: its reader and sender see ``error``; its first error is counted."""
        if stream.error is None:
            self.listener.on_stream_error(self, error)
        stream.fail(error)

    def _malformed(self, stream: StreamState, error: ProtocolError) -> None:
        """A malformed response is a stream error (RFC 9113 §8.1.1): reset that stream only."""
        self.fail_stream(stream, error)
        self.finish(stream, ErrorCodes.PROTOCOL_ERROR)

    def _check_sendable(self, stream: StreamState) -> None:
        if stream.error is not None:
            raise stream.error.for_stream(stream.stream_id)
        if self.error is not None:
            raise self.error.for_stream(stream.stream_id)
        if stream.reset_locally:
            raise RuntimeError(f"stream {stream.stream_id} was reset by this client")
        if stream.local_closed:
            raise RuntimeError(f"stream {stream.stream_id}: the request was already ended")

    def _send_timeout(self, stream: StreamState) -> H2PoolError:
        """No window came: the request cannot be completed, so the stream ends, as on a read timeout."""
        timeout = self.config.write_timeout
        error = WriteTimeout(
            f"the server gave no send window within {timeout} s", origin=self.origin_str, stream_id=stream.stream_id
        )
        self.fail_stream(stream, error)
        return error

    def _local_end(self, stream: StreamState) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._release_slot(stream)

    def _release_slot(self, stream: StreamState) -> None:
        if stream.slot_released:
            return
        self._free_slot(stream, stream.error)
        self._streams.pop(stream.stream_id, None)
        self._h2.forget_stream(stream.stream_id)
        self._wake_open_waiters()
        self.listener.on_capacity(self)

    def _free_slot(self, stream: StreamState, error: H2PoolError | None) -> None:
        """The slot ``stream`` held is free: count it in the ledger and tell tracers."""
        stream.slot_released = True
        self.slots.closed()
        if self.hooks is not None:
            call_hook(self.hooks, "stream_closed", self.info, stream.stream_id, error)

    async def _wait_open_room(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._open_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise AcquireTimeout(
                f"the server's stream limit ({self.slots.peer_limit}) left no room within {timeout} s",
                origin=self.origin_str,
            ) from None
        finally:
            if waiter in self._open_waiters:
                self._open_waiters.remove(waiter)

    def _wake_open_waiters(self) -> None:
        while self._open_waiters:
            waiter = self._open_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_drain(self) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters.append(waiter)
        timeout = self.config.write_timeout
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise WriteTimeout(f"the socket did not drain within {timeout} s", origin=self.origin_str) from None
        if self.error is not None:
            raise self.error.for_stream(None)

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all_senders(self) -> None:
        """New window for every stream: the most urgent senders resume first and take it first."""
        waiting = [stream for stream in self._streams.values() if stream.sending_blocked]
        waiting.sort(key=_urgency)
        for stream in waiting:
            stream.wake_sender()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        uploads, self._unflushed = self._unflushed, 0
        data = self._h2.data_to_send()
        if data and self.transport is not None:
            paused = self._write_paused
            self.transport.write(data)
            self._writes += 1
            if self._trace is not None:
                self._trace.sent(data)
            if paused:
                # Counted from the transport's own pause, not its buffer size,
                # which the kernel's socket buffer can hide.
                self._answers_while_paused += max(0, len(data) - uploads)
                self._flooded()

    def _flooded(self) -> bool:
        """Abort if answers pile up behind a socket the server does not drain.

        That is a flood of PINGs or SETTINGS from a server that reads
        nothing; checked as answers are written and as more frames arrive.
        """
        if not self._write_paused or self._answers_while_paused <= MAX_ANSWERS_WHILE_PAUSED:
            return False
        if self.error is None:
            self._abort(ProtocolError("server floods frames that need answers but reads none", origin=self.origin_str))
        return True

    def _fail(self, error: H2PoolError) -> None:
        """The connection is finished: fail what still runs on it and tell the pool."""
        if self.error is not None:
            return
        self.error = error
        self._budget.give_back(self.receive_window)
        self.receive_window = 0
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.deadlines.close()
        for future in (self.ready, self.settled):
            if not future.done():
                future.set_exception(error)
                # Marks the exception as retrieved; waiters get copies.
                future.exception()
        for stream in list(self._streams.values()):
            stream_error = error.for_stream(stream.stream_id)
            if stream.written_at == self._writes:
                not_processed(stream_error)
            self.fail_stream(stream, stream_error)
            if not stream.slot_released:
                self._free_slot(stream, stream_error)
        self._streams.clear()
        self._wake_open_waiters()
        self._wake_drain_waiters()
        if self.transport is not None:
            self.transport.close()
        logger.debug("connection #%d to %s closed: %s", self.info.id, self.origin_str, error)
        if self.hooks is not None:
            call_hook(self.hooks, "connection_closed", self.info, error)
        self.listener.on_closed(self)


def _urgency(stream: StreamState) -> int:
    return stream.urgency


def _stream_reset(code: Any, origin: str, stream_id: int) -> H2PoolError:
    return StreamReset(code if code is not None else ErrorCodes.INTERNAL_ERROR, origin=origin, stream_id=stream_id)


_HANDLERS: dict[type[h2.events.Event], Any] = {
    h2.events.ResponseReceived: Connection._on_response,
    h2.events.DataReceived: Connection._on_data,
    h2.events.TrailersReceived: Connection._on_trailers,
    h2.events.StreamEnded: Connection._on_stream_ended,
    h2.events.StreamReset: Connection._on_stream_reset,
    h2.events.WindowUpdated: Connection._on_window_updated,
    h2.events.RemoteSettingsChanged: Connection._on_settings,
    h2.events.ConnectionTerminated: Connection._on_goaway,
    h2.events.PingAckReceived: Connection._on_ping_ack,
    h2.events.SettingsAcknowledged: Connection._on_settings_acked,
}
