"""Responses: status and headers at once, the body as it arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .headers import Headers

if TYPE_CHECKING:
    from .handle import Handle


class Response:
    """An HTTP/2 response.

    From :meth:`Pool.request` the body is already read: ``content`` and
    ``trailers`` are set. From :meth:`Pool.stream`, read it with
    :meth:`aiter_bytes` or :meth:`aread` before the ``async with`` block ends.
    """

    __slots__ = ("_consumed", "_content", "_handle", "headers", "status", "stream_id", "trailers")

    def __init__(self, handle: Handle, status: int, headers: Headers) -> None:
        self._handle = handle
        self.status = status
        self.headers = headers
        self.stream_id: int = handle.stream_id or 0
        #: Response trailers; empty until the body has been read to its end.
        self.trailers = Headers()
        self._content: bytes | None = None
        self._consumed = False

    def __repr__(self) -> str:
        return f"<Response [{self.status}] stream {self.stream_id}>"

    @property
    def content(self) -> bytes:
        """The whole body; only after :meth:`aread` (done for you by ``pool.request``)."""
        if self._content is None:
            raise RuntimeError("the body has not been read: call `await response.aread()` first")
        return self._content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive; flow control follows this loop's pace."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        self._start_reading()
        read = self._handle.read_data
        while chunk := await read():
            yield chunk
        self._body_done()

    async def aread(self) -> bytes:
        """Read the rest of the body and return all of it."""
        if self._content is None:
            self._start_reading()
            read = self._handle.read_pieces
            pieces = []
            while more := await read():
                pieces += more
            # Most small bodies arrive in one piece: no copy then.
            self._content = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self._body_done()
        return self._content

    def _start_reading(self) -> None:
        if self._consumed:
            raise RuntimeError("the body was already consumed by aiter_bytes()")
        self._consumed = True

    async def aclose(self) -> None:
        """Stop reading: the stream is reset if unfinished and its slot returned."""
        self._handle.release()

    def _body_done(self) -> None:
        trailers = self._handle.trailers
        if trailers is not None:
            self.trailers = trailers
