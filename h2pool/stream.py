"""The receiving side of one HTTP/2 stream.

The connection's reader pushes events in synchronously (``on_*``); the task
that owns the stream pulls them out. Received DATA stays here, counted, until
the consumer takes it: only then is it acknowledged to the peer (see
``Connection.consumed``), so a slow consumer never makes the client hold
more than the stream's window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine

from .deadlines import Deadlines
from .exceptions import H2PoolError
from .headers import Headers, ResponseHead
from .priority import DEFAULT_URGENCY


class StreamState:
    """What has arrived on a stream, and who is waiting for more."""

    __slots__ = (
        "_reader",
        "_sender",
        "buffered",
        "chunks",
        "error",
        "head",
        "local_closed",
        "remote_closed",
        "reset",
        "slot_released",
        "stream_id",
        "trailers",
        "unacknowledged",
        "urgency",
        "written_at",
    )

    def __init__(self, stream_id: int, written_at: int = 0, urgency: int = DEFAULT_URGENCY) -> None:
        self.stream_id = stream_id
        #: RFC 9218 urgency (0 most urgent): the order senders get new window in.
        self.urgency = urgency
        #: The connection's write count when HEADERS were queued: if the
        #: connection dies before another write, the server never saw them.
        self.written_at = written_at
        self.head: ResponseHead | None = None
        self.trailers: Headers | None = None
        #: Payloads not yet taken by the consumer. A list, not a deque:
        #: chunks are only appended and taken all at once, and an empty
        #: deque costs 600 bytes per in-flight stream.
        self.chunks: list[bytes] = []
        #: Payload bytes held in ``chunks``.
        self.buffered = 0
        #: Their flow-controlled length (with padding): what taking them acknowledges.
        self.unacknowledged = 0
        self.remote_closed = False
        self.local_closed = False
        #: Reset by either side; the stream is closed in h2.
        self.reset = False
        self.slot_released = False
        self.error: H2PoolError | None = None
        self._reader: asyncio.Future[None] | None = None
        self._sender: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        """Closed in h2's state machine: both ends done, or reset."""
        return self.reset or (self.local_closed and self.remote_closed)

    # Called by the connection's reader.

    def on_headers(self, head: ResponseHead) -> None:
        self.head = head
        self._wake_reader()

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        self.unacknowledged += flow_controlled_length
        self._wake_reader()

    def on_trailers(self, trailers: Headers) -> None:
        self.trailers = trailers

    def on_end(self) -> None:
        self.remote_closed = True
        self._wake_reader()

    def fail(self, error: H2PoolError) -> None:
        """The stream cannot go on; both reader and sender see ``error``."""
        if self.error is None:
            self.error = error
        self.wake()

    def wake(self) -> None:
        """Let a waiting reader and sender look at the stream again."""
        self._wake_reader()
        self.wake_sender()

    @property
    def reset_locally(self) -> bool:
        """Reset by this client (``Handle.reset``), with no error of its own."""
        return self.reset and self.error is None

    @property
    def sending_blocked(self) -> bool:
        """Whether the sender is waiting for flow-control window."""
        return self._sender is not None and not self._sender.done()

    def wake_sender(self) -> None:
        sender = self._sender
        if sender is not None and not sender.done():
            sender.set_result(None)

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # Called by the task that owns the stream.

    def take_all(self) -> tuple[list[bytes], int, int]:
        """Every payload buffered, their byte count and their flow-controlled length.

        Handing over all that arrived since the consumer last read saves a
        consumer iteration and a window acknowledgement per DATA frame
        (nginx sends 8 KiB frames); handing the payloads over unjoined lets
        a consumer that gathers a whole body join it once.
        """
        chunks, size, flow = self.chunks, self.buffered, self.unacknowledged
        self.chunks = []
        self.buffered = self.unacknowledged = 0
        return chunks, size, flow

    def wait_readable(
        self, deadlines: Deadlines, timeout: float, make_error: Callable[[], H2PoolError]
    ) -> Coroutine[None, None, None]:
        """Wait until the reader has something new; after ``timeout`` s raise ``make_error()``."""
        if self._reader is not None:
            # Two readers would each get part of the body, in no useful order.
            raise RuntimeError(f"stream {self.stream_id}: another task is already reading it")
        self._reader = waiter = deadlines.loop.create_future()
        return self._wait(waiter, deadlines, timeout, make_error)

    def wait_sendable(
        self, deadlines: Deadlines, timeout: float, make_error: Callable[[], H2PoolError]
    ) -> Coroutine[None, None, None]:
        """Wait for flow-control window (or an error); after ``timeout`` s raise ``make_error()``."""
        if self._sender is not None:
            raise RuntimeError(f"stream {self.stream_id}: another task is already sending on it")
        self._sender = waiter = deadlines.loop.create_future()
        return self._wait(waiter, deadlines, timeout, make_error)

    async def _wait(
        self,
        waiter: asyncio.Future[None],
        deadlines: Deadlines,
        timeout: float,
        make_error: Callable[[], H2PoolError],
    ) -> None:
        """Await ``waiter`` (the reader's or the sender's) within ``timeout``, then let it go."""
        deadlines.add(waiter, timeout, make_error)
        try:
            await waiter
        finally:
            deadlines.discard(waiter)
            if self._reader is waiter:
                self._reader = None
            else:
                self._sender = None
