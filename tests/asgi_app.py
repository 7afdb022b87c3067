"""A plain ASGI 3 app (no framework) served by hypercorn in the tests.

Routes (anything else: 404; a known path with a wrong method: 405):

* ``GET /small``, ``/1k``, ``/1m``, ``/8m``  -- the docroot files' bytes
  (:func:`tests.servers.expected_bytes`), streamed in 64 KiB chunks.
* ``GET /bytes/{n}``       -- ``n`` deterministic bytes (:func:`tests.servers.deterministic_bytes`).
* ``POST|PUT /echo``       -- response body = request body, streamed back chunk by chunk.
* ``POST|PUT /sha256``     -- JSON ``{"sha256": hex, "length": n}`` of the whole request body.
* ``GET /trailers``        -- body ``hello``, trailers ``x-checksum: abc`` and
  ``x-trailer-2: two``. Hypercorn only sends trailers if the request carried
  ``te: trailers``.
* ``GET /delay/{ms}``      -- sleep ``ms`` milliseconds (max 60 s), then ``done``.
* ``GET /status/{code}``   -- respond with that status (200..599).
* ``GET /headers``         -- JSON list of ``[name, value]`` request header pairs.
* ``GET /slow/{n}/{ms}``   -- ``n`` chunks of 16 KiB with ``ms`` ms pauses between them;
  the body equals ``/bytes/{n*16384}``.

GET routes also answer HEAD.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

from tests.servers import DOCROOT_FILES, expected_bytes, iter_deterministic_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHUNK: Final[int] = 64 * 1024
SLOW_CHUNK: Final[int] = 16 * 1024
MAX_BYTES: Final[int] = 256 * 1024 * 1024
MAX_DELAY_MS: Final[int] = 60_000
MAX_SLOW_CHUNKS: Final[int] = 4096

Headers = list[tuple[bytes, bytes]]


async def _start(
    send: Send,
    status: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    trailers: bool = False,
) -> None:
    msg: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": list(headers),
    }
    if trailers:
        msg["trailers"] = True
    await send(msg)


async def _body(send: Send, data: bytes, *, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _simple(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain",
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    headers: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend(extra)
    await _start(send, status, headers)
    await _body(send, body)


async def _stream(send: Send, length: int, chunks: Iterable[bytes], *, pause: float = 0.0) -> None:
    await _start(
        send,
        200,
        [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(length).encode()),
        ],
    )
    first = True
    for chunk in chunks:
        if pause and not first:
            await asyncio.sleep(pause)
        first = False
        await _body(send, chunk, more=True)
    await _body(send, b"")


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected")
        parts.append(bytes(msg.get("body", b"")))
        if not msg.get("more_body", False):
            return b"".join(parts)


def _int_arg(value: str, lo: int, hi: int) -> int | None:
    if not value.isdigit():
        return None
    n = int(value)
    return n if lo <= n <= hi else None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    method: str = scope["method"]
    path: str = scope["path"]
    parts = path.strip("/").split("/")
    get = method in ("GET", "HEAD")
    upload = method in ("POST", "PUT")

    async def not_allowed(allow: bytes) -> None:
        await _simple(send, 405, b"method not allowed\n", extra=[(b"allow", allow)])

    name = path.lstrip("/")
    if len(parts) == 1 and name in DOCROOT_FILES:
        if not get:
            return await not_allowed(b"GET, HEAD")
        data = expected_bytes(name)
        await _stream(send, len(data), (data[i : i + CHUNK] for i in range(0, len(data), CHUNK)))
        return

    if parts[0] == "bytes" and len(parts) == 2:
        n = _int_arg(parts[1], 0, MAX_BYTES)
        if n is None:
            return await _simple(send, 400, b"bad length\n")
        if not get:
            return await not_allowed(b"GET, HEAD")
        await _stream(send, n, iter_deterministic_bytes(n, chunk_size=CHUNK))
        return

    if path == "/echo":
        if not upload:
            return await not_allowed(b"POST, PUT")
        ctype = b"application/octet-stream"
        for k, v in scope["headers"]:
            if k == b"content-type":
                ctype = v
        await _start(send, 200, [(b"content-type", ctype)])
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = bytes(msg.get("body", b""))
            more = bool(msg.get("more_body", False))
            if chunk or not more:
                await _body(send, chunk, more=more)
            if not more:
                return

    if path == "/sha256":
        if not upload:
            return await not_allowed(b"POST, PUT")
        h = hashlib.sha256()
        length = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = bytes(msg.get("body", b""))
            h.update(chunk)
            length += len(chunk)
            if not msg.get("more_body", False):
                break
        out = json.dumps({"sha256": h.hexdigest(), "length": length}).encode()
        return await _simple(send, 200, out, b"application/json")

    if path == "/trailers":
        if not get:
            return await not_allowed(b"GET, HEAD")
        supported = "http.response.trailers" in scope.get("extensions", {})
        await _start(
            send,
            200,
            [(b"content-type", b"text/plain"), (b"content-length", b"5")],
            trailers=supported,
        )
        await _body(send, b"hello")
        if supported:
            await send(
                {
                    "type": "http.response.trailers",
                    "headers": [(b"x-checksum", b"abc"), (b"x-trailer-2", b"two")],
                    "more_trailers": False,
                }
            )
        return

    if parts[0] == "delay" and len(parts) == 2:
        ms = _int_arg(parts[1], 0, MAX_DELAY_MS)
        if ms is None:
            return await _simple(send, 400, b"bad delay\n")
        if not get:
            return await not_allowed(b"GET, HEAD")
        await asyncio.sleep(ms / 1000)
        return await _simple(send, 200, b"done")

    if parts[0] == "status" and len(parts) == 2:
        code = _int_arg(parts[1], 200, 599)
        if code is None:
            return await _simple(send, 400, b"bad status\n")
        if code in (204, 304):
            await _start(send, code)
            return await _body(send, b"")
        return await _simple(send, code, f"status {code}\n".encode())

    if path == "/headers":
        if not get:
            return await not_allowed(b"GET, HEAD")
        pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        return await _simple(send, 200, json.dumps(pairs).encode(), b"application/json")

    if parts[0] == "slow" and len(parts) == 3:
        n = _int_arg(parts[1], 0, MAX_SLOW_CHUNKS)
        ms = _int_arg(parts[2], 0, MAX_DELAY_MS)
        if n is None or ms is None:
            return await _simple(send, 400, b"bad slow arguments\n")
        if not get:
            return await not_allowed(b"GET, HEAD")
        await _stream(
            send,
            n * SLOW_CHUNK,
            iter_deterministic_bytes(n * SLOW_CHUNK, chunk_size=SLOW_CHUNK),
            pause=ms / 1000,
        )
        return

    await _simple(send, 404, b"not found\n")
