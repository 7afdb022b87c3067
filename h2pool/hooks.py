"""Tracing hooks: what the pool and its connections report as they work.

A tracer subclasses :class:`PoolHooks`, overrides the methods it cares about
and passes an instance as ``Pool(hooks=...)``. Without one, each hook point
costs a single ``is None`` check, so the hot paths pay nothing measurable.

Hooks run synchronously inside the event loop, some of them in the middle of
dispatching a socket read: they must be quick and must not block. An
exception raised by a hook is logged on the ``h2pool`` logger and swallowed,
because a broken tracer must never fail a request or strand a connection.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .exceptions import ConnectionTerminated, H2PoolError

logger = logging.getLogger("h2pool")

_connection_ids = itertools.count(1)


class ConnectionInfo:
    """What a tracer may know about one connection; filled in as set-up proceeds."""

    __slots__ = ("id", "origin", "remote_address", "tls_cipher", "tls_resumed", "tls_version")

    def __init__(self, origin: str) -> None:
        #: Unique within the process, in the order connections were dialled.
        self.id = next(_connection_ids)
        self.origin = origin
        #: The peer's IP address once connected (None with a custom connector
        #: that has no socket).
        self.remote_address: str | None = None
        self.tls_version: str | None = None
        #: The negotiated cipher suite, in OpenSSL's naming (``"TLS_AES_256_GCM_SHA384"``).
        self.tls_cipher: str | None = None
        self.tls_resumed = False

    def __repr__(self) -> str:
        return f"<ConnectionInfo #{self.id} {self.origin} {self.remote_address or '-'}>"


class PoolHooks:
    """Override any of these; the defaults do nothing."""

    def connection_opened(self, conn: ConnectionInfo, seconds: float) -> None:
        """TCP and TLS are done and our HTTP/2 preface is sent; ``seconds`` since the dial began.

        The server's SETTINGS may still be on their way.
        """

    def connection_closed(self, conn: ConnectionInfo, reason: H2PoolError) -> None:
        """The connection is gone; ``reason`` says why (idle, drained, GOAWAY, loss, failed set-up...)."""

    def tls_handshake(self, conn: ConnectionInfo, resumed: bool, seconds: float) -> None:
        """A TLS handshake finished: ``resumed`` when an offered session was accepted."""

    def stream_opened(self, conn: ConnectionInfo, stream_id: int) -> None:
        """Request HEADERS were queued on a new stream."""

    def stream_closed(self, conn: ConnectionInfo, stream_id: int, error: H2PoolError | None) -> None:
        """The stream's slot was freed: completed (``error`` None), reset, or failed."""

    def goaway(self, conn: ConnectionInfo, error: ConnectionTerminated) -> None:
        """The server sent GOAWAY; ``error`` carries its code and last stream ID."""

    def ping_rtt(self, conn: ConnectionInfo, seconds: float) -> None:
        """A health PING was answered after ``seconds``."""

    def slot_acquired(self, origin: str, waited: float) -> None:
        """A caller got a stream slot after waiting ``waited`` seconds (0 when one was free)."""


def call_hook(hooks: PoolHooks, name: str, *args: Any) -> None:
    """Run one hook, keeping its failure away from the caller."""
    try:
        getattr(hooks, name)(*args)
    except Exception:
        logger.exception("h2pool hook %s raised", name)
