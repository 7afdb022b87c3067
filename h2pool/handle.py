"""Handles: a reserved stream slot that a caller drives as one HTTP/2 stream.

A handle exists once the pool has reserved a slot on a connection that is
set up. Sending HEADERS turns the slot into a stream with an ID; releasing
the handle (leaving ``async with pool.acquire(...)``) resets the stream with
CANCEL if it is still open and gives back any window held by unread data,
so no exit path can leak a slot or a piece of the connection window.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

from .exceptions import H2PoolError, ReadTimeout, RequestTimeout
from .headers import (
    HeaderInput,
    Headers,
    RawHeaders,
    ResponseHead,
    add_priority_header,
    request_headers,
    trailer_headers,
)
from .priority import DEFAULT_PRIORITY, Priority

if TYPE_CHECKING:
    from .connection import Connection
    from .origin import Origin
    from .stream import StreamState


class Handle:
    """One reserved stream slot on one connection.

    ``deadline`` (event-loop time, or None) bounds every wait for response
    headers and data on top of the per-event ``read_timeout``;
    ``pool.request(timeout=...)`` sets it and bounds the rest itself.
    ``priority`` orders the request body for send window (RFC 9218).
    ``origin`` is the origin the caller asked for: a coalesced connection
    (RFC 9113 §9.1.1) was made for another host that its certificate shares.
    """

    __slots__ = ("_conn", "_released", "_stream", "deadline", "origin", "priority")

    def __init__(
        self,
        conn: Connection,
        deadline: float | None = None,
        priority: Priority = DEFAULT_PRIORITY,
        origin: Origin | None = None,
    ) -> None:
        self._conn = conn
        self._stream: StreamState | None = None
        self._released = False
        self.deadline = deadline
        self.priority = priority
        self.origin = origin if origin is not None else conn.origin

    def __repr__(self) -> str:
        return f"<Handle {self._conn.origin_str} stream={self.stream_id}>"

    @property
    def coalesced(self) -> bool:
        """Whether the stream shares a connection made for another origin."""
        return self.origin != self._conn.origin

    @property
    def stream_id(self) -> int | None:
        """The HTTP/2 stream ID, once headers are sent."""
        return self._stream.stream_id if self._stream is not None else None

    @property
    def trailers(self) -> Headers | None:
        """The response trailers once they have arrived (None until then, and if there are none).

        They follow the body, so they are certain to be here once the body has been read to its end.
        """
        stream = self._stream
        return stream.trailers if stream is not None else None

    # Sending.

    async def send_headers(
        self, method: str, path: str, headers: HeaderInput = None, *, end_stream: bool = False
    ) -> int:
        """Send the request's HEADERS; returns the new stream ID.

        ``path`` is the ``:path`` (with query); ``:authority`` comes from the
        origin unless ``headers`` has a ``host``. The handle's priority goes
        out as the ``priority`` header unless ``headers`` has one.
        """
        block = request_headers(method, self.origin, path, headers)
        add_priority_header(block, self.priority)
        return await self.send_block(block, end_stream=end_stream)

    async def send_block(self, block: RawHeaders, *, end_stream: bool = False) -> int:
        """Send a header block already built by :func:`h2pool.headers.request_headers`."""
        if self._stream is not None:
            raise RuntimeError(f"{self!r}: headers were already sent")
        self._check_held()
        self._stream = await self._conn.open_stream(
            block, end_stream, self._conn.config.acquire_timeout, self.priority.urgency
        )
        return self._stream.stream_id

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes within the flow-control windows (waits for WINDOW_UPDATE)."""
        await self._conn.send_data(self._sent_stream(), bytes(data), end_stream)

    async def end_stream(self) -> None:
        """End the request body with an empty DATA frame."""
        self._conn.end_stream(self._sent_stream())

    async def send_trailers(self, headers: HeaderInput) -> None:
        """Send trailers; this ends the request."""
        self._conn.send_trailers(self._sent_stream(), trailer_headers(headers, self._conn.origin))

    # Receiving.

    async def read_headers(self) -> ResponseHead:
        """Wait for the final response's status and headers."""
        stream = self._sent_stream()
        while stream.head is None:
            self._check_readable(stream)
            await self._wait(stream)
        return stream.head

    async def read_data(self) -> bytes:
        """The next chunk of the response body; ``b""`` once it has ended.

        Taking a chunk acknowledges it to the server, so the server can send
        only as far ahead of the consumer as the stream window allows.
        """
        pieces = await self.read_pieces()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def read_pieces(self) -> list[bytes]:
        """:meth:`read_data` as the pieces it arrived in (``[]`` once the body has ended).

        For a caller that gathers the whole body: joining it once at the end
        copies each byte once, where joining every chunk copies it twice.
        """
        stream = self._sent_stream()
        while True:
            if stream.chunks:
                pieces, size, flow_controlled_length = stream.take_all()
                self._conn.consumed(stream, size, flow_controlled_length)
                return pieces
            if stream.remote_closed:
                return []
            self._check_readable(stream)
            await self._wait(stream)

    # Ending.

    def reset(self, error_code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """Reset the stream (RST_STREAM with ``error_code``) if it is still open."""
        if self._stream is not None:
            self._conn.finish(self._stream, error_code)

    def fail(self, error: H2PoolError) -> None:
        """Abandon the stream because of a local ``error``, which its reader will raise."""
        if self._stream is not None:
            self._conn.fail_stream(self._stream, error)
            self._conn.finish(self._stream)

    def release(self) -> None:
        """Give the slot back; idempotent. Open streams are reset with CANCEL."""
        if self._released:
            return
        self._released = True
        if self._stream is None:
            self._conn.unreserve()
        else:
            self._conn.finish(self._stream)

    @property
    def released(self) -> bool:
        return self._released

    @property
    def response_complete(self) -> bool:
        """Whether the server has ended its side of the stream."""
        return self._stream is not None and self._stream.remote_closed

    # Internals.

    def _check_held(self) -> None:
        if self._released:
            raise RuntimeError(f"{self!r} was already released")

    def _sent_stream(self) -> StreamState:
        self._check_held()
        if self._stream is None:
            raise RuntimeError(f"{self!r}: send the request headers first")
        return self._stream

    def _check_readable(self, stream: StreamState) -> None:
        if stream.error is not None:
            raise stream.error.for_stream(stream.stream_id)
        if stream.reset_locally:
            raise RuntimeError(f"{self!r} was reset: nothing more will arrive")

    def _wait(self, stream: StreamState) -> Coroutine[None, None, None]:
        """Wait for more on ``stream``, bounded by ``read_timeout`` and the request's deadline.

        It returns the stream's wait itself rather than awaiting it: one
        coroutine fewer to make and to resume on every wait.
        """
        conn = self._conn
        timeout = conn.config.read_timeout
        if self.deadline is not None:
            remaining = self.deadline - conn.loop.time()
            if remaining < timeout:
                return stream.wait_readable(conn.deadlines, max(remaining, 0.0), self._request_timeout)
        return stream.wait_readable(conn.deadlines, timeout, self._read_timeout)

    def _read_timeout(self) -> H2PoolError:
        # Silence may mean a dead connection: check it before it takes more streams.
        self._conn.health_check()
        timeout = self._conn.config.read_timeout
        return self._timed_out(
            ReadTimeout(f"no response data within {timeout} s", origin=self._conn.origin_str, stream_id=self.stream_id)
        )

    def _request_timeout(self) -> H2PoolError:
        return self._timed_out(
            RequestTimeout(
                "the request's total timeout expired", origin=self._conn.origin_str, stream_id=self.stream_id
            )
        )

    def _timed_out(self, error: H2PoolError) -> H2PoolError:
        """A timeout ends the stream: later reads raise it again rather than wait on."""
        if self._stream is not None:
            self._conn.fail_stream(self._stream, error)
        return error
