"""The pool: connections per origin, stream slots handed out as handles.

Acquiring is synchronous whenever a connection of the origin has a free slot
(:class:`~h2pool.slots.OriginSlots` finds it in O(1)); only a caller that
finds none awaits anything. Then, in order: a new connection is dialled if
the origin may have one more (a connection still connecting counts as
capacity), else the caller queues FIFO until a slot frees or
``acquire_timeout`` passes. Dials run as tasks of the pool, not of the
caller, so a cancelled caller never leaves a half-made connection behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from h2.errors import ErrorCodes

from . import happy_eyeballs
from .config import PoolConfig
from .connection import Connection
from .exceptions import (
    AcquireTimeout,
    ALPNError,
    ConnectError,
    ConnectionClosed,
    ConnectionTerminated,
    ConnectTimeout,
    H2PoolError,
    H2PoolTimeout,
    InvalidRequest,
    PoolClosed,
    RequestBodyError,
    RequestTimeout,
    StreamReset,
    TLSError,
    TLSHandshakeTimeout,
    not_processed,
)
from .handle import Handle
from .headers import HeaderInput, RawHeaders, add_priority_header, request_headers
from .hooks import PoolHooks, call_hook
from .origin import Origin, parse_origin, parse_url
from .priority import DEFAULT_PRIORITY, Priority, UrgencyQueue
from .resolver import DNSCache, Resolver, SystemResolver
from .response import Response
from .slots import OriginSlots
from .tls import SessionCache, prepare_context
from .tls_transport import open_tls
from .windows import WindowBudget

#: Replaces TCP and TLS set-up: given a new connection (an asyncio.Protocol),
#: it must call ``conn.connection_made(transport)``. ``h2pool.testing`` uses it
#: to attach in-memory peers; OSError and ssl.SSLError it raises count as
#: connect failures.
Connector = Callable[[Connection], Awaitable[None]]

logger = logging.getLogger("h2pool")

RequestContent = bytes | bytearray | memoryview | AsyncIterable[bytes] | None

#: Replays after graceful GOAWAYs allowed per request, beyond max_retries:
#: a bound against a server that drains forever without serving this request.
MAX_DRAIN_REPLAYS = 100

#: Origins without connections whose statistics are kept (``stats()``)
#: before the idle sweep forgets the oldest.
MAX_UNUSED_ORIGINS = 256

#: RFC 9110 §15.5.20 Misdirected Request: the server will not answer for this
#: host on this connection (sent when a coalesced connection was wrong).
MISDIRECTED_REQUEST = 421

#: Bodies up to this size are sent before reading the response; larger ones
#: (and streamed ones) go in a task, so a server that answers early, or
#: waits for the whole body, never deadlocks against our sending.
INLINE_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class OriginStats:
    """A snapshot of one origin."""

    connections: int
    connecting: int
    streams_open: int
    slots_reserved: int
    waiting: int
    replays: int
    handshakes_full: int
    handshakes_resumed: int
    #: Streams that ended in an error, by exception class name, and callers
    #: that timed out waiting for a slot. A lost connection counts once per
    #: stream it carried; replayed requests count each failed attempt.
    stream_errors: dict[str, int] = field(default_factory=dict)
    #: Connections that failed or ended in an error, by exception class
    #: name; the pool's own closes (idle, drained) and graceful GOAWAYs are
    #: not errors.
    connection_errors: dict[str, int] = field(default_factory=dict)
    #: The origin whose connection this one's last request shared (RFC 9113
    #: §9.1.1 coalescing), or None.
    coalesced_into: str | None = None


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the pool, as :meth:`Pool.stats` returns it.

    ``connections`` counts set-up sockets, ``streams_open`` streams in
    flight (HEADERS sent, not closed), ``slots_reserved`` handles not yet
    sent, ``waiting`` callers queued for a slot.
    """

    connections: int
    connecting: int
    streams_open: int
    slots_reserved: int
    waiting: int
    origins: dict[str, OriginStats] = field(default_factory=dict)
    #: Receive window advertised over all connections (within receive_buffer_budget).
    receive_window: int = 0


class _OriginState:
    __slots__ = (
        "coalesced_into",
        "coalescing_refused",
        "connection_errors",
        "dial_failures",
        "dials",
        "handshakes_full",
        "handshakes_resumed",
        "origin",
        "redial",
        "replays",
        "slots",
        "stream_errors",
        "waiters",
    )

    def __init__(self, origin: Origin, max_connections: int) -> None:
        self.origin = origin
        self.slots: OriginSlots[Connection] = OriginSlots(max_connections)
        #: Callers waiting for a slot: most urgent first, FIFO within an urgency.
        self.waiters: UrgencyQueue[asyncio.Future[Connection]] = UrgencyQueue()
        self.dials: set[asyncio.Task[None]] = set()
        #: Requests replayed because the server never processed them.
        self.replays = 0
        self.handshakes_full = 0
        self.handshakes_resumed = 0
        self.dial_failures = 0
        self.redial: asyncio.TimerHandle | None = None
        self.stream_errors: dict[str, int] = {}
        self.connection_errors: dict[str, int] = {}
        #: The origin whose connection this origin's last request shared.
        self.coalesced_into: _OriginState | None = None
        #: The server answered 421 on a shared connection: always dial our own.
        self.coalescing_refused = False


class Pool:
    """An HTTP/2 client connection pool. See ``docs/api.md``.

    Use as ``async with Pool() as pool:`` or call :meth:`aclose`. Options are
    the fields of :class:`~h2pool.config.PoolConfig`.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        *,
        connector: Connector | None = None,
        hooks: PoolHooks | None = None,
        resolver: Resolver | None = None,
        **options: Any,
    ) -> None:
        self.config = PoolConfig(**options)
        self._hooks = hooks
        self._dns = DNSCache(resolver if resolver is not None else SystemResolver(), self.config.dns_cache_ttl)
        self._ssl_context = prepare_context(ssl_context)
        self._connector = connector
        self._origins: dict[Origin, _OriginState] = {}
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._sessions = SessionCache() if self.config.tls_session_reuse else None
        self._window_budget = WindowBudget(self.config.receive_buffer_budget)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # Public API.

    def acquire(self, origin: str | Origin, *, priority: Priority | None = None) -> AcquireContext:
        """``async with pool.acquire(origin) as handle``: a reserved stream slot.

        ``priority`` orders this caller among those waiting for a slot and its
        request body among those waiting for send window; ``send_headers``
        sends it as the ``priority`` header.
        """
        return AcquireContext(self, parse_origin(origin), priority or DEFAULT_PRIORITY)

    def stream(
        self,
        method: str,
        url: str,
        *,
        headers: HeaderInput = None,
        content: RequestContent = None,
        timeout: float | None = None,
        priority: Priority | None = None,
    ) -> StreamContext:
        """``async with pool.stream(...) as response``: the body is read inside the block."""
        return StreamContext(self, method, url, headers, content, timeout, priority or DEFAULT_PRIORITY)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeaderInput = None,
        content: RequestContent = None,
        timeout: float | None = None,
        priority: Priority | None = None,
    ) -> Response:
        """Send a request and read the whole response.

        ``timeout`` bounds the whole request (acquire, send, receive) on top
        of the pool's per-step timeouts. ``priority`` (RFC 9218) is sent as
        the ``priority`` header and orders the request locally: see
        :meth:`acquire`.
        """
        async with StreamContext(
            self, method, url, headers, content, timeout, priority or DEFAULT_PRIORITY
        ) as response:
            await response.aread()
        return response

    def stats(self) -> PoolStats:
        """Counts of connections, streams and waiters, in total and per origin."""
        origins = {}
        for origin, state in self._origins.items():
            conns = list(state.slots.ledgers)
            ready = sum(1 for conn in conns if conn.ready.done() and conn.error is None)
            origins[str(origin)] = OriginStats(
                connections=ready,
                connecting=sum(1 for conn in conns if not conn.ready.done()),
                streams_open=state.slots.open_streams,
                slots_reserved=state.slots.reserved,
                waiting=sum(1 for waiter in state.waiters if not waiter.done()),
                replays=state.replays,
                handshakes_full=state.handshakes_full,
                handshakes_resumed=state.handshakes_resumed,
                stream_errors=dict(state.stream_errors),
                connection_errors=dict(state.connection_errors),
                coalesced_into=str(state.coalesced_into.origin) if state.coalesced_into is not None else None,
            )
        values = origins.values()
        return PoolStats(
            connections=sum(o.connections for o in values),
            connecting=sum(o.connecting for o in values),
            streams_open=sum(o.streams_open for o in values),
            slots_reserved=sum(o.slots_reserved for o in values),
            waiting=sum(o.waiting for o in values),
            origins=origins,
            receive_window=self._window_budget.allocated,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close every connection and fail every waiter with :class:`PoolClosed`."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        dials: list[asyncio.Task[None]] = []
        for state in list(self._origins.values()):
            error = PoolClosed("the pool was closed", origin=str(state.origin))
            self._fail_waiters(state, error)
            dials.extend(state.dials)
            for task in state.dials:
                task.cancel()
            if state.redial is not None:
                state.redial.cancel()
            for conn in list(state.slots.ledgers):
                conn.close(error)
        if dials:
            await asyncio.gather(*dials, return_exceptions=True)
        self._origins.clear()
        # Let the transports' close callbacks run before the caller moves on.
        await asyncio.sleep(0)

    # Acquiring slots.

    async def _acquire(
        self, origin: Origin, deadline: float | None = None, priority: Priority = DEFAULT_PRIORITY
    ) -> Handle:
        if self._closed:
            raise not_processed(PoolClosed("the pool is closed", origin=str(origin)))
        state = self._state_for(origin)
        hooks = self._hooks
        started = asyncio.get_running_loop().time() if hooks is not None else 0.0
        conn: Connection | None = None
        if (
            not state.slots.ledgers
            and origin.scheme == "https"
            and self.config.coalesce_connections
            and not state.coalescing_refused
        ):
            conn = await self._coalesced_slot(state)
            if self._closed:
                # The pool closed during the look-up (no slot was taken then):
                # a dial now would outlive it.
                raise not_processed(PoolClosed("the pool is closed", origin=str(origin)))
        if conn is None:
            conn = state.slots.reserve()
            if conn is None and state.slots.may_dial():
                self._dial(state)
                conn = state.slots.reserve()
            if conn is None:
                conn = await self._wait_for_slot(state, deadline, priority.urgency)
            elif self.config.predictive_prewarm:
                self._predict(state, conn)
        conn.idle_since = None
        if not conn.ready.done() or conn.error is not None:
            try:
                await conn.wait_ready()
            except BaseException:
                conn.unreserve()
                raise
        if hooks is not None:
            call_hook(hooks, "slot_acquired", str(origin), conn.loop.time() - started)
        return Handle(conn, deadline, priority, origin)

    def _state_for(self, origin: Origin) -> _OriginState:
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _OriginState(origin, self.config.max_connections_per_origin)
        return state

    async def _coalesced_slot(self, state: _OriginState) -> Connection | None:
        """A slot reserved on another origin's connection that may carry ``state``'s request, else None.

        RFC 9113 §9.1.1: the connection must be open to one of this host's
        addresses and its verified certificate must cover this host. Both
        are checked on the very connection the slot is reserved on, every
        time: another connection of the same origin may have another
        certificate or address. Nothing is dialled or waited for on the
        other origin's behalf; with no such free slot the caller dials its
        own connection. The host is resolved only when a candidate exists,
        through the DNS cache a dial would use anyway.
        """
        origin = state.origin
        if not any(self._coalescing_candidates(origin)):
            state.coalesced_into = None
            return None
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                resolved = await self._dns.resolve(origin.host, origin.port)
            addresses = {ipaddress.ip_address(address) for address in resolved}
        except Exception:
            return None  # The dial meets the same failure and reports it.
        if state.slots.ledgers or state.coalescing_refused or self._closed:
            return None  # Meanwhile: a connection of its own, a 421, or the pool closed.
        for other, conn in self._coalescing_candidates(origin):
            certificate = conn.certificate
            remote = conn.info.remote_address
            if (
                certificate is not None
                and remote is not None
                # As addresses, not text: a resolver may write ::1 as 0:0:0:0:0:0:0:1.
                and ipaddress.ip_address(remote) in addresses
                and certificate.covers(origin.host)
                and other.slots.reserve_on(conn)
            ):
                if state.coalesced_into is not other:
                    logger.debug("%s shares connection #%d of %s", origin, conn.info.id, other.origin)
                state.coalesced_into = other
                return conn
        state.coalesced_into = None
        return None

    def _coalescing_candidates(self, origin: Origin) -> Iterator[tuple[_OriginState, Connection]]:
        """Open connections of other https origins on ``origin``'s port that take new streams."""
        for other in self._origins.values():
            if other.origin == origin or other.origin.port != origin.port or other.origin.scheme != "https":
                continue
            for conn in other.slots.ledgers:
                if conn.certificate is not None and conn.error is None and conn.slots.accepting:
                    yield other, conn

    def _predict(self, state: _OriginState, conn: Connection) -> None:
        """Dial ahead of demand while the origin as a whole is past ``prewarm_threshold``.

        Runs on every reservation, so the common case is one comparison: the
        chosen connection is still below the threshold of its limit. Past it,
        connections are dialled until the origin's streams in use fit within
        the threshold of its whole capacity (dials still connecting count):
        headroom grows with demand, so a burst that doubles the load finds
        most of its connections already open, where one connection of
        headroom would leave it waiting for several dials.
        """
        ledger = conn.slots
        threshold = self.config.prewarm_threshold
        if ledger.busy < threshold * min(ledger.peer_limit, ledger.local_cap):
            return
        slots = state.slots
        while slots.in_use() > threshold * slots.capacity() and slots.may_dial():
            self._dial(state)

    async def _wait_for_slot(self, state: _OriginState, deadline: float | None, urgency: int) -> Connection:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Connection] = loop.create_future()
        state.waiters.append(waiter, urgency)
        timeout = self.config.acquire_timeout
        bound_by_deadline = deadline is not None and deadline - loop.time() < timeout
        try:
            async with asyncio.timeout_at(deadline if bound_by_deadline else loop.time() + timeout):
                return await waiter
        except TimeoutError:
            _return_granted_slot(waiter)
            state.waiters.discard(waiter, urgency)
            error: H2PoolError
            if bound_by_deadline:
                error = RequestTimeout(
                    "the request's total timeout expired waiting for a slot", origin=str(state.origin)
                )
            else:
                error = AcquireTimeout(f"no stream slot free within {timeout} s", origin=str(state.origin))
            _count(state.stream_errors, error)
            raise not_processed(error) from None
        except asyncio.CancelledError:
            _return_granted_slot(waiter)
            state.waiters.discard(waiter, urgency)
            raise

    def _serve(self, state: _OriginState) -> None:
        """Hand free slots to waiters, most urgent first, dialling where allowed."""
        waiters = state.waiters
        slots = state.slots
        while waiters:
            waiter = waiters.first()
            if waiter.done():
                waiters.popleft()
                continue
            conn = slots.reserve()
            if conn is None:
                if self._closed or not slots.may_dial():
                    return
                self._dial(state)
                continue
            waiters.popleft()
            waiter.set_result(conn)

    def _count_wait_error(self, url: str, error: H2PoolError) -> None:
        """Count a request that failed before it had a stream."""
        state = self._origins.get(parse_url(url).origin)
        if state is not None:
            _count(state.stream_errors, error)

    def _fail_waiters(self, state: _OriginState, error: H2PoolError) -> None:
        while state.waiters:
            waiter = state.waiters.popleft()
            if not waiter.done():
                # A queued caller had sent nothing.
                waiter.set_exception(not_processed(error.for_stream(None)))

    # Connections.

    def _dial(self, state: _OriginState) -> Connection:
        conn = Connection(
            state.origin, self.config, self, state.slots.initial_peer_limit(), self._window_budget, self._hooks
        )
        state.slots.add(conn, conn.slots)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        state.dials.add(task)
        task.add_done_callback(state.dials.discard)
        return conn

    async def _connect(self, conn: Connection) -> None:
        """Set ``conn`` up within ``connect_timeout``; the TLS handshake also within its own timeout."""
        origin = conn.origin
        where = str(origin)
        config = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.connect_timeout
        try:
            if self._connector is not None:
                async with _phase(config.connect_timeout, ConnectTimeout, where):
                    await self._connector(conn)
            else:
                async with _phase(config.connect_timeout, ConnectTimeout, where):
                    sock = await self._open_socket(origin)
                if origin.scheme == "https":
                    tls_budget = min(config.tls_handshake_timeout, deadline - loop.time())
                    async with _phase(tls_budget, TLSHandshakeTimeout, where):
                        await self._start_tls(conn, sock)
                else:
                    await loop.create_connection(lambda: conn, sock=sock)
        except H2PoolError as exc:
            conn.close(exc)
        except ssl.SSLCertVerificationError as exc:
            conn.close(TLSError(f"certificate verification failed: {exc.verify_message}", origin=where))
        except ssl.SSLError as exc:
            if "NO_APPLICATION_PROTOCOL" in (exc.reason or "").upper() or "no application protocol" in str(exc):
                # The server speaks TLS but refused every protocol we offered: only h2.
                conn.close(ALPNError(f"server does not offer HTTP/2 in ALPN: {exc}", origin=where))
            else:
                conn.close(TLSError(f"TLS handshake failed: {exc}", origin=where))
        except OSError as exc:
            conn.close(ConnectError(f"could not connect: {exc}", origin=where))
        except asyncio.CancelledError:
            conn.close(PoolClosed("the pool was closed while connecting", origin=where))
            raise
        except Exception as exc:
            # A custom resolver or connector failing in its own way: its
            # callers must still learn of it rather than wait forever.
            conn.close(ConnectError(f"could not connect: {exc!r}", origin=where))
        else:
            state = self._state_of(conn)
            if state is not None and conn.error is None and conn.slots.busy == 0:
                # Pre-warmed, or its callers gave up: idle from now on, and
                # closed after idle_timeout if nobody uses it.
                self._start_idle_clock(conn)

    async def _open_socket(self, origin: Origin) -> socket.socket:
        """A connected TCP socket: the host's cached addresses raced per Happy Eyeballs (RFC 8305)."""
        addresses = await self._dns.resolve(origin.host, origin.port)
        try:
            return await happy_eyeballs.connect(addresses, origin.port, self.config.happy_eyeballs_delay)
        except happy_eyeballs.AllAttemptsFailed:
            # The host may have moved: look it up afresh next time.
            self._dns.forget(origin.host)
            raise

    async def _start_tls(self, conn: Connection, sock: socket.socket) -> None:
        """TLS over ``sock``, offering a cached session for this exact host and port."""
        origin = conn.origin
        loop = asyncio.get_running_loop()
        sessions = self._sessions
        offered = sessions.get(origin.host, origin.port, loop.time()) if sessions is not None else None
        started = loop.time()
        await open_tls(conn, sock, self._ssl_context, origin.host, offered)
        state = self._state_of(conn)
        if conn.error is not None or state is None:
            return
        if self._hooks is not None:
            call_hook(self._hooks, "tls_handshake", conn.info, conn.tls_resumed, loop.time() - started)
        if conn.tls_resumed:
            state.handshakes_resumed += 1
        else:
            state.handshakes_full += 1
        if sessions is not None and not conn.tls_resumed:
            # A declined offer is stale; the full handshake just done brings
            # the session to offer next time. (A resumed connection keeps the
            # cached one: servers with reusable tickets resume it again.)
            if offered is not None:
                sessions.drop(origin.host, origin.port)
            conn.watch_tls_session(self._store_session)

    def _store_session(self, conn: Connection, session: ssl.SSLSession) -> None:
        if self._sessions is not None and not self._closed:
            self._sessions.put(conn.origin.host, conn.origin.port, session, conn.loop.time())

    # ConnectionListener: called synchronously by connections.

    def _state_of(self, conn: Connection) -> _OriginState | None:
        state = self._origins.get(conn.origin)
        if state is None or conn not in state.slots.ledgers:
            return None
        return state

    def on_settled(self, conn: Connection, peer_limit: int) -> None:
        state = self._state_of(conn)
        if state is not None:
            state.slots.settle(conn, peer_limit)
            self._serve(state)

    def on_capacity(self, conn: Connection) -> None:
        state = self._state_of(conn)
        if state is None:
            return
        state.slots.refresh(conn)
        if state.waiters:
            self._serve(state)
        if conn.slots.busy == 0:
            if not conn.slots.accepting:
                conn.close_drained()
            else:
                self._went_idle(state, conn)

    def on_draining(self, conn: Connection) -> None:
        state = self._state_of(conn)
        if state is None:
            return
        state.slots.stop_accepting(conn)
        if conn.slots.busy == 0:
            conn.close_drained()
        elif state.waiters:
            self._serve(state)

    def on_stream_error(self, conn: Connection, error: H2PoolError) -> None:
        state = self._state_of(conn)
        if state is not None:
            _count(state.stream_errors, error)

    def on_closed(self, conn: Connection) -> None:
        state = self._state_of(conn)
        if state is None:
            return
        if conn.error is not None and _is_connection_error(conn.error):
            _count(state.connection_errors, conn.error)
        state.slots.remove(conn)
        never_ready = conn.ready.done() and conn.ready.exception() is not None
        if never_ready:
            state.dial_failures += 1
            if state.redial is None:
                delay = self._backoff_cap(state.dial_failures)
                state.redial = conn.loop.call_later(delay, self._redial, state)
        else:
            state.dial_failures = 0
            self._keep_minimum(state)
        if not state.waiters:
            return
        if never_ready and not state.slots.ledgers and conn.error is not None:
            # The origin is unreachable: waiting on would only end in AcquireTimeout.
            self._fail_waiters(state, conn.error)
        else:
            self._serve(state)

    # Pre-warming and resizing.

    async def prewarm(self, origins: str | Origin | Iterable[str | Origin], connections: int = 1) -> None:
        """Open connections before the first request: TCP, TLS and SETTINGS exchanged.

        Each origin gets at least ``connections`` (at most
        ``max_connections_per_origin``) connections taking streams. The first
        connection error is raised once all attempts have finished.
        """
        if self._closed:
            raise not_processed(PoolClosed("the pool is closed"))
        targets = [origins] if isinstance(origins, str | Origin) else list(origins)
        pending: list[Connection] = []
        for target in targets:
            state = self._state_for(parse_origin(target))
            wanted = min(connections, state.slots.max_connections)
            pending.extend(conn for conn in state.slots.ledgers if conn.slots.accepting and not conn.slots.settled)
            pending.extend(self._dial(state) for _ in range(wanted - state.slots.accepting))
        results = await asyncio.gather(*(conn.wait_settled() for conn in pending), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def resize(
        self, *, max_connections_per_origin: int | None = None, max_concurrent_streams: int | None = None
    ) -> None:
        """Change the connection and stream caps while requests run.

        Growing serves queued callers at once. Shrinking never fails a request:
        surplus connections take no new streams and close when drained, and a
        lower stream cap only limits new streams.
        """
        self.config = dataclasses.replace(
            self.config,
            max_connections_per_origin=_or_current(max_connections_per_origin, self.config.max_connections_per_origin),
            max_concurrent_streams=_or_current(max_concurrent_streams, self.config.max_concurrent_streams),
        )
        for state in list(self._origins.values()):
            slots = state.slots
            slots.max_connections = self.config.max_connections_per_origin
            for conn in list(slots.ledgers):
                conn.slots.local_cap = self.config.max_concurrent_streams
                slots.refresh(conn)
            surplus = slots.accepting - slots.max_connections
            # Retire the newest connections: the oldest carry the most streams.
            for conn in reversed(list(slots.ledgers)):
                if surplus <= 0:
                    break
                if conn.slots.accepting:
                    conn.retire()
                    surplus -= 1
            self._serve(state)

    def _backoff_cap(self, failures: int) -> float:
        """Exponential backoff from ``retry_backoff``, capped at ``retry_backoff_max``."""
        return min(self.config.retry_backoff_max, self.config.retry_backoff * 2.0 ** (failures - 1))

    def _redial(self, state: _OriginState) -> None:
        state.redial = None
        self._keep_minimum(state)

    def _keep_minimum(self, state: _OriginState) -> None:
        """Replace lost connections up to ``min_connections_per_origin``."""
        wanted = min(self.config.min_connections_per_origin, state.slots.max_connections)
        while not self._closed and state.slots.accepting < wanted:
            self._dial(state)

    # Idle connections.

    def _went_idle(self, state: _OriginState, conn: Connection) -> None:
        self._start_idle_clock(conn)
        idle = sum(1 for other in state.slots.ledgers if other.idle_since is not None)
        if idle > self.config.max_idle_connections_per_origin:
            state.slots.stop_accepting(conn)
            conn.close(
                ConnectionClosed(
                    "closed: more idle connections than max_idle_connections_per_origin", origin=conn.origin_str
                )
            )

    def _start_idle_clock(self, conn: Connection) -> None:
        conn.idle_since = conn.loop.time()
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self.config.idle_timeout, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self.config.idle_timeout
        next_expiry: float | None = None
        unused: list[_OriginState] = []
        for state in list(self._origins.values()):
            for conn in list(state.slots.ledgers):
                since = conn.idle_since
                if since is None or conn.slots.busy:
                    continue
                if since + timeout <= now:
                    if state.slots.accepting > self.config.min_connections_per_origin:
                        state.slots.stop_accepting(conn)
                        conn.close(ConnectionClosed(f"closed after {timeout} s idle", origin=conn.origin_str))
                    # Else the minimum holds it open: looked at again when a connection next goes idle.
                    continue
                if next_expiry is None or since + timeout < next_expiry:
                    next_expiry = since + timeout
            if not state.slots.ledgers and not state.waiters and not state.dials and state.redial is None:
                unused.append(state)
        # Unused origins keep their statistics until there are too many;
        # the least recently created go first.
        for state in unused[: max(0, len(self._origins) - MAX_UNUSED_ORIGINS)]:
            del self._origins[state.origin]
        if next_expiry is not None and not self._closed:
            self._sweeper = loop.call_at(next_expiry, self._sweep_idle)

    # Requests.

    async def _open_response(self, ctx: StreamContext) -> Response:
        target = parse_url(ctx.url)
        block = request_headers(ctx.method, target.origin, target.path, ctx.headers)
        add_priority_header(block, ctx.priority)
        body = _body_of(ctx.content, target.origin)
        attempt = drained = 0
        while True:
            try:
                response = await self._send_request(ctx, target.origin, block, body)
                if response.status != MISDIRECTED_REQUEST or not self._misdirected(ctx, target.origin, body):
                    return response
            except H2PoolError as exc:
                if not _replayable(exc, body):
                    raise
                if _drained_after_progress(exc) and self.config.max_retries:
                    # A server that ends connections after N streams (nginx's
                    # keepalive_requests) makes progress on every connection;
                    # such replays do not spend max_retries (with N = 1, the
                    # k-th of k concurrent requests needs k attempts). Only
                    # max_retries=0 turns them off.
                    drained += 1
                    if drained > MAX_DRAIN_REPLAYS:
                        raise
                else:
                    attempt += 1
                    if attempt > self.config.max_retries:
                        raise
                ctx.abandon_attempt()
                # The state, not a lookup: a coalesced origin may have been swept meanwhile.
                self._state_for(target.origin).replays += 1
                logger.debug("replaying %s %s after %r", ctx.method, ctx.url, exc)
                if isinstance(exc, StreamReset):
                    # The server is shedding load: back off, capped and jittered.
                    await asyncio.sleep(random.uniform(0, self._backoff_cap(attempt)))

    def _misdirected(self, ctx: StreamContext, origin: Origin, body: bytes | AsyncIterable[bytes] | None) -> bool:
        """A 421 on a shared connection: stop coalescing this origin; replay if the body allows.

        The server refused to answer for this host on a connection made for
        another (RFC 9113 §9.1.1), so it did not process the request.
        """
        handle = ctx.handle
        if handle is None or not handle.coalesced:
            return False
        state = self._state_for(origin)
        state.coalesced_into = None
        state.coalescing_refused = True
        logger.debug("%s answered 421 on a shared connection: no more sharing for it", origin)
        if not _resendable(body):
            return False  # A streamed body cannot be sent again: the caller gets the 421.
        state.replays += 1
        ctx.abandon_attempt()
        return True

    async def _send_request(
        self, ctx: StreamContext, origin: Origin, block: RawHeaders, body: bytes | AsyncIterable[bytes] | None
    ) -> Response:
        handle = await self._acquire(origin, ctx.deadline, ctx.priority)
        ctx.handle = handle
        await handle.send_block(block, end_stream=not body)
        if isinstance(body, bytes) and len(body) <= INLINE_BODY_LIMIT:
            await handle.send_data(body, end_stream=True)
        elif body:
            ctx.body_task = asyncio.get_running_loop().create_task(_send_body(handle, body))
        status, headers = await handle.read_headers()
        return Response(handle, status, headers)


def _count(counts: dict[str, int], error: H2PoolError) -> None:
    kind = type(error).__name__
    counts[kind] = counts.get(kind, 0) + 1


def _is_connection_error(error: H2PoolError) -> bool:
    """Whether a connection's end was a failure, not a close the pool or a graceful GOAWAY chose."""
    if isinstance(error, ConnectionTerminated):
        return error.error_code != ErrorCodes.NO_ERROR
    return type(error) is not ConnectionClosed and not isinstance(error, PoolClosed)


def _drained_after_progress(error: H2PoolError) -> bool:
    """A graceful GOAWAY from a server that processed streams on that connection."""
    return (
        isinstance(error, ConnectionTerminated) and error.error_code == ErrorCodes.NO_ERROR and error.last_stream_id > 0
    )


def _resendable(body: bytes | AsyncIterable[bytes] | None) -> bool:
    """Whether a request body can be sent again: a streamed one is consumed by sending it."""
    return body is None or isinstance(body, bytes)


def _replayable(error: H2PoolError, body: bytes | AsyncIterable[bytes] | None) -> bool:
    """Replay only what the server never acted on, and only a body that can be sent again."""
    if error.may_have_been_processed or not _resendable(body):
        return False
    return isinstance(error, ConnectionClosed | StreamReset) or (
        # The connection failed in some other way before this request left.
        not isinstance(error, InvalidRequest | ConnectError | H2PoolTimeout | PoolClosed)
    )


@contextlib.asynccontextmanager
async def _phase(seconds: float, error: type[H2PoolError], origin: str) -> AsyncIterator[None]:
    """Bound one phase of connection set-up, raising its own typed timeout."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise error(f"not done within {seconds:.3g} s", origin=origin) from None


def _or_current(value: int | None, current: int) -> int:
    return current if value is None else value


def _return_granted_slot(waiter: asyncio.Future[Connection]) -> None:
    """A waiter gave up after a slot was granted to it: give the slot back."""
    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
        waiter.result().unreserve()
    elif not waiter.done():
        waiter.cancel()


def _body_of(content: RequestContent, origin: Origin) -> bytes | AsyncIterable[bytes] | None:
    if content is None:
        return None
    if isinstance(content, bytes):
        return content
    if isinstance(content, bytearray | memoryview):
        return bytes(content)
    if isinstance(content, AsyncIterable):
        return content
    raise InvalidRequest(
        f"content must be bytes or an async iterable of bytes, not {type(content).__name__}", origin=str(origin)
    )


async def _send_body(handle: Handle, body: bytes | AsyncIterable[bytes]) -> None:
    """Send a request body while the response is being read."""
    try:
        if isinstance(body, bytes):
            await handle.send_data(body, end_stream=True)
            return
        async for chunk in body:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise InvalidRequest(
                    f"request body chunks must be bytes, not {type(chunk).__name__}", origin=str(handle.origin)
                )
            if chunk:
                await handle.send_data(chunk)
        await handle.end_stream()
    except H2PoolError as exc:
        if not handle.response_complete:
            handle.fail(exc)
    except Exception as exc:
        error = RequestBodyError(
            f"the request body raised {exc!r}", origin=str(handle.origin), stream_id=handle.stream_id
        )
        error.__cause__ = exc
        handle.fail(error)


class AcquireContext:
    """What :meth:`Pool.acquire` returns: ``async with`` yields a :class:`Handle`."""

    __slots__ = ("_handle", "_origin", "_pool", "_priority")

    def __init__(self, pool: Pool, origin: Origin, priority: Priority) -> None:
        self._pool = pool
        self._origin = origin
        self._priority = priority
        self._handle: Handle | None = None

    async def __aenter__(self) -> Handle:
        self._handle = await self._pool._acquire(self._origin, None, self._priority)
        return self._handle

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.release()


class StreamContext:
    """What :meth:`Pool.stream` returns: ``async with`` yields a :class:`Response`."""

    __slots__ = (
        "body_task",
        "content",
        "deadline",
        "handle",
        "headers",
        "method",
        "pool",
        "priority",
        "timeout",
        "url",
    )

    def __init__(
        self,
        pool: Pool,
        method: str,
        url: str,
        headers: HeaderInput,
        content: RequestContent,
        timeout: float | None,
        priority: Priority,
    ) -> None:
        self.pool = pool
        self.priority = priority
        self.method = method
        self.url = url
        self.headers = headers
        self.content = content
        self.timeout = timeout
        self.deadline: float | None = None
        self.handle: Handle | None = None
        self.body_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Response:
        if self.timeout is None:
            try:
                return await self.pool._open_response(self)
            except BaseException:
                self._finish()
                raise
        self.deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(self.deadline) as scope:
                return await self.pool._open_response(self)
        except BaseException as exc:
            if not (isinstance(exc, TimeoutError) and scope.expired()):
                self._finish()
                raise
            error = RequestTimeout(
                f"no response within the request's timeout of {self.timeout:.6g} s", origin=_origin_of(self.url)
            )
            if self.handle is not None and self.handle.stream_id is not None:
                self.handle.fail(error)  # Counted, and seen by tracers, as the stream's end.
            else:
                not_processed(error)  # Nothing of the request was sent.
                self.pool._count_wait_error(self.url, error)
            self._finish()
            raise error from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()
        if self.handle is not None:
            self.handle.release()

    def abandon_attempt(self) -> None:
        """Give up this attempt's stream before a replay."""
        self._finish()
        self.body_task = None
        self.handle = None


def _origin_of(url: str) -> str:
    try:
        return str(parse_url(url).origin)
    except InvalidRequest:
        return ""
