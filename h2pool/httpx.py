"""An httpx transport that sends every request over an h2pool :class:`~h2pool.Pool`.

Install with ``pip install 'h2pool[httpx]'``; ``import h2pool`` itself never
needs httpx. Use::

    pool = h2pool.Pool(ssl_context)
    async with httpx.AsyncClient(transport=H2PoolTransport(pool)) as client:
        response = await client.get("https://example.org/")

Closing the transport (or the client) closes the pool.

Requests: method, ``str(request.url)`` and the headers are passed on, less
the fields that only mean something on one HTTP/1.1 hop (``connection``,
``keep-alive``, ``proxy-connection``, ``transfer-encoding``, ``upgrade`` and
any field the ``connection`` header names); h2pool turns ``host`` into
``:authority``. A body httpx has already read is sent as bytes, any other as
the async stream httpx hands over. Responses stream: the h2pool stream stays
open until httpx closes the response, which returns its slot.

Timeouts are the pool's (``connect_timeout``, ``read_timeout``, ...): httpx's
own ``timeout=`` is not applied, because h2pool's timeouts are per phase of a
shared connection rather than per socket.

Errors, raised with the h2pool error chained as ``__cause__``:

==========================================  ==================================
h2pool                                      httpx
==========================================  ==================================
ConnectTimeout, TLSHandshakeTimeout         ConnectTimeout
ConnectError, TLSError, ALPNError           ConnectError
AcquireTimeout                              PoolTimeout
ReadTimeout                                 ReadTimeout
WriteTimeout                                WriteTimeout
RequestTimeout (the whole-request bound)    ReadTimeout: httpx has no
                                            whole-request timeout, and the
                                            wait it ends is for the server
other H2PoolTimeout                         TimeoutException
ConnectionLost                              ReadError
StreamReset, ConnectionTerminated,          RemoteProtocolError
other ConnectionClosed, ProtocolError
InvalidRequest                              LocalProtocolError
RequestBodyError                            WriteError
PoolClosed                                  ConnectError before a response
                                            (no connection can be had), else
                                            ReadError (the body was cut off)
any other H2PoolError                       TransportError
==========================================  ==================================

A :class:`RequestBodyError` carries the body iterator's own exception as its
``__cause__`` in turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

try:
    import httpx
except ImportError as exc:  # pragma: no cover - the tests hide httpx through sys.modules
    raise ImportError(
        "h2pool.httpx needs httpx; install the extra: pip install 'h2pool[httpx]'", name=exc.name
    ) from exc

from .exceptions import (
    AcquireTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectTimeout,
    H2PoolError,
    H2PoolTimeout,
    InvalidRequest,
    PoolClosed,
    ProtocolError,
    ReadTimeout,
    RequestBodyError,
    RequestTimeout,
    StreamReset,
    WriteTimeout,
)
from .pool import Pool, StreamContext
from .response import Response

__all__ = ["H2PoolTransport"]

#: RFC 9113 §8.2.2: meaningful on one HTTP/1.1 hop only; httpx adds some of them itself.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})

# Order matters: subclasses before their bases (ConnectTimeout is both a
# ConnectError and an H2PoolTimeout; ConnectionLost is a ConnectionClosed).
_ERROR_MAP: tuple[tuple[type[H2PoolError], type[httpx.TransportError]], ...] = (
    (ConnectTimeout, httpx.ConnectTimeout),
    (ConnectError, httpx.ConnectError),
    (AcquireTimeout, httpx.PoolTimeout),
    (ReadTimeout, httpx.ReadTimeout),
    (WriteTimeout, httpx.WriteTimeout),
    (RequestTimeout, httpx.ReadTimeout),
    (H2PoolTimeout, httpx.TimeoutException),
    (ConnectionLost, httpx.ReadError),
    (StreamReset, httpx.RemoteProtocolError),
    (ConnectionClosed, httpx.RemoteProtocolError),
    (ProtocolError, httpx.RemoteProtocolError),
    (InvalidRequest, httpx.LocalProtocolError),
    (RequestBodyError, httpx.WriteError),
)


def _translate(error: H2PoolError, request: httpx.Request, *, responded: bool) -> httpx.TransportError:
    """The httpx exception for an h2pool one (see the table in the module docstring)."""
    kind: type[httpx.TransportError] = httpx.TransportError
    if isinstance(error, PoolClosed):
        kind = httpx.ReadError if responded else httpx.ConnectError
    else:
        for source, target in _ERROR_MAP:
            if isinstance(error, source):
                kind = target
                break
    return kind(str(error), request=request)


def _request_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop connection-specific fields, including those ``connection`` itself names (RFC 9110 §7.6.1)."""
    drop = set(_HOP_BY_HOP)
    for name, value in raw:
        if name.lower() == b"connection":
            drop.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return [(name, value) for name, value in raw if name.lower() not in drop]


def _request_body(request: httpx.Request) -> bytes | AsyncIterable[bytes] | None:
    try:
        content = request.content
    except httpx.RequestNotRead:
        stream = request.stream
        if not isinstance(stream, AsyncIterable):
            raise httpx.LocalProtocolError(
                "H2PoolTransport needs an async request body (use httpx.AsyncClient)", request=request
            ) from None
        return stream
    # An empty body goes as END_STREAM on the HEADERS frame.
    return content or None


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one response; closing it ends the h2pool stream and frees its slot."""

    def __init__(self, context: StreamContext, response: Response, request: httpx.Request) -> None:
        self._context = context
        self._response = response
        self._request = request
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except H2PoolError as exc:
            # The stream is dead either way: give its slot back now rather
            # than whenever httpx gets round to closing the response.
            await self.aclose()
            raise _translate(exc, self._request, responded=True) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._context.__aexit__(None, None, None)


class H2PoolTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` backed by an h2pool :class:`~h2pool.Pool`.

    By default the transport owns the pool: :meth:`aclose` (which
    ``httpx.AsyncClient.aclose`` calls) closes it. With ``close_pool=False``
    the pool outlives the client, so several clients, or a client and direct
    ``pool.request`` callers, can share its connections.
    """

    def __init__(self, pool: Pool, *, close_pool: bool = True) -> None:
        self.pool = pool
        self.close_pool = close_pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        context = self.pool.stream(
            request.method,
            str(request.url),
            headers=_request_headers(request.headers.raw),
            content=_request_body(request),
        )
        try:
            # StreamContext.__aenter__ releases the slot itself when it fails.
            response = await context.__aenter__()
        except H2PoolError as exc:
            raise _translate(exc, request, responded=False) from exc
        return httpx.Response(
            response.status,
            headers=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers],
            stream=_ResponseStream(context, response, request),
            extensions={"http_version": b"HTTP/2", "stream_id": response.stream_id},
            request=request,
        )

    async def aclose(self) -> None:
        if self.close_pool:
            await self.pool.aclose()
