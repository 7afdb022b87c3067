"""h2pool against real HTTP/2 servers (nginx, nghttpd, hypercorn) on 127.0.0.1.

The servers come from ``tests/conftest.py``. Where a test needs to see the
pool's connections (to count dials, read a stream's buffered bytes or the
frames we wrote) it passes a ``connector`` that dials exactly like the pool
does and keeps a reference to each :class:`~h2pool.connection.Connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, RstStreamFrame

from h2pool import Handle, Pool, PoolClosed
from h2pool.connection import Connection
from h2pool.stream import StreamState
from tests.conftest import ServerFactory
from tests.servers import KINDS, ServerProcess, expected_bytes, expected_sha256

pytestmark = pytest.mark.timeout(60)

EIGHT_MIB = 8 * 1024 * 1024
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: A path on each server kind that accepts a POST body and answers 200.
UPLOAD_PATH = {"nginx": "/upload", "nghttpd": "/echo", "hypercorn": "/echo"}

#: Stream limits above 150 for the private servers of the 150-stream test.
ABOVE_150 = {"nginx": 256, "nghttpd": 200, "hypercorn": 200}


class RecordingConnector:
    """Dials like the pool (TCP, then TLS with ALPN h2) and records each connection and its writes."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self.ssl_context = ssl_context
        self.connections: list[Connection] = []
        #: Every byte each connection wrote, in the order of ``connections``.
        self.sent: list[bytearray] = []
        #: Every stream opened, over all connections, in order.
        self.streams: list[StreamState] = []

    async def __call__(self, conn: Connection) -> None:
        sink = bytearray()
        self.connections.append(conn)
        self.sent.append(sink)
        open_stream = conn.open_stream

        async def recording_open_stream(*args: Any, **kwargs: Any) -> StreamState:
            stream = await open_stream(*args, **kwargs)
            self.streams.append(stream)
            return stream

        conn.open_stream = recording_open_stream  # type: ignore[method-assign]
        made = conn.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            write = transport.write

            def recording_write(data: Any) -> None:
                sink.extend(data)
                write(data)

            transport.write = recording_write  # type: ignore[method-assign]
            made(transport)

        conn.connection_made = connection_made  # type: ignore[method-assign]
        origin = conn.origin
        tls = self.ssl_context if origin.scheme == "https" else None
        await asyncio.get_running_loop().create_connection(
            lambda: conn, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
        )


def frames_written(data: bytes) -> list[Frame]:
    """Parse what a client wrote: the preface, then whole frames."""
    assert data.startswith(PREFACE), "a client connection must start with the HTTP/2 preface"
    view = memoryview(data)[len(PREFACE) :]
    frames: list[Frame] = []
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def sockets_to(port: int) -> int:
    """Established TCP connections from this process to 127.0.0.1:port (seen by the OS)."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def read_all(handle: Handle) -> bytes:
    chunks: list[bytes] = []
    for _ in range(100_000):
        chunk = await handle.read_data()
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError("response body never ended")


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        # A real producer yields to the loop between chunks.
        await asyncio.sleep(0)


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 10 ms for at most ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


# Basic request.


async def test_get_returns_exact_body_status_and_headers(
    h2_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with asyncio.timeout(10), Pool(client_ssl_context) as pool:
        response = await pool.request("GET", h2_server.url("/small"))
    assert response.status == 200
    assert response.content == expected_bytes("small")
    assert response.headers["Content-Length"] == "100"
    assert response.headers.get("CONTENT-LENGTH") == "100"
    assert "content-length" in response.headers
    assert response.stream_id % 2 == 1


# Streams and connections.


@pytest.mark.parametrize("kind", KINDS)
async def test_150_streams_are_open_at_once_on_one_connection(
    kind: str, server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    server = server_factory(kind, max_concurrent_streams=ABOVE_150[kind])
    count = 150
    # A 512-byte stream window lets the server send only half of each 1 KiB
    # body until we read: no stream can end before all 150 are open.
    pool = Pool(client_ssl_context, max_connections_per_origin=1, initial_stream_window=512)
    all_open = asyncio.Event()
    opened = 0
    peak_open = 0

    async def one() -> tuple[int, int, bytes]:
        nonlocal opened, peak_open
        async with pool.acquire(server.origin) as handle:
            stream_id = await handle.send_headers("GET", "/1k", end_stream=True)
            opened += 1
            peak_open = max(peak_open, pool.stats().streams_open)
            if opened == count:
                all_open.set()
            # Bounded, so that a pool that cannot open all 150 fails the assertions instead of hanging.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), 5)
            head = await handle.read_headers()
            return stream_id, head.status, await read_all(handle)

    async with asyncio.timeout(30), pool:
        results = await asyncio.gather(*(one() for _ in range(count)))
        stats = pool.stats()
    assert peak_open == count
    assert stats.connections == 1
    assert stats.streams_open == 0
    assert [status for _, status, _ in results] == [200] * count
    assert all(body == expected_bytes("1k") for _, _, body in results)
    stream_ids = [stream_id for stream_id, _, _ in results]
    assert len(set(stream_ids)) == count
    assert all(stream_id % 2 == 1 for stream_id in stream_ids)


async def test_150_delayed_requests_overlap_in_time_on_one_connection(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    server = server_factory("hypercorn", max_concurrent_streams=200)
    count, delay = 150, 0.3
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(30), Pool(client_ssl_context, max_connections_per_origin=1) as pool:
        started = loop.time()
        responses = await asyncio.gather(
            *(pool.request("GET", server.url(f"/delay/{int(delay * 1000)}")) for _ in range(count))
        )
        elapsed = loop.time() - started
        connections = pool.stats().connections
    assert [r.content for r in responses] == [b"done"] * count
    assert connections == 1
    # One after another they would take 45 s; a third of that is far from serial.
    assert elapsed < count * delay / 3, f"150 requests of 0.3 s took {elapsed:.1f} s"


async def test_100_held_handles_share_one_socket(h2_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    # Every server here allows at least 100 streams, so one socket carries them all.
    count = 100
    path = UPLOAD_PATH[h2_server.kind]
    all_sent = asyncio.Event()
    finish = asyncio.Event()
    sent = 0
    pool = Pool(client_ssl_context)

    async def hold() -> int:
        nonlocal sent
        async with pool.acquire(h2_server.origin) as handle:
            # No END_STREAM: the stream stays open until we say so.
            await handle.send_headers("POST", path)
            sent += 1
            if sent == count:
                all_sent.set()
            await finish.wait()
            await handle.end_stream()
            head = await handle.read_headers()
            await read_all(handle)
            return head.status

    async with asyncio.timeout(20), pool:
        tasks = [asyncio.create_task(hold()) for _ in range(count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_sent.wait(), 5)
        held = pool.stats()
        os_sockets = sockets_to(h2_server.port)
        finish.set()
        statuses = await asyncio.gather(*tasks)
    assert held.streams_open == count
    assert held.connections <= 2
    assert held.connections == 1
    assert os_sockets == 1
    assert statuses == [200] * count


async def test_cold_thundering_herd_dials_only_as_many_connections_as_the_peer_limit_needs(
    h2_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    count = 1000
    peer_limit = int(h2_server.options["max_concurrent_streams"])
    connector = RecordingConnector(client_ssl_context)
    # Generous connection limits: only the pool's dialling policy bounds the count.
    pool = Pool(
        client_ssl_context,
        connector=connector,
        max_connections_per_origin=50,
        max_idle_connections_per_origin=50,
    )
    async with asyncio.timeout(40), pool:
        responses = await asyncio.gather(*(pool.request("GET", h2_server.url("/small")) for _ in range(count)))
    assert len(connector.connections) <= math.ceil(count / peer_limit)
    assert [r.status for r in responses] == [200] * count
    assert all(r.content == expected_bytes("small") for r in responses)


# Large bodies.


async def test_8mib_download_is_exact_via_request(h2_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    async with asyncio.timeout(30), Pool(client_ssl_context) as pool:
        response = await pool.request("GET", h2_server.url("/8m"))
    assert response.status == 200
    assert len(response.content) == EIGHT_MIB
    assert hashlib.sha256(response.content).hexdigest() == expected_sha256("8m")


async def test_8mib_download_is_exact_via_stream(h2_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    digest = hashlib.sha256()
    length = 0
    async with asyncio.timeout(30), Pool(client_ssl_context) as pool:
        async with pool.stream("GET", h2_server.url("/8m")) as response:
            status = response.status
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                length += len(chunk)
        streams_open = pool.stats().streams_open
    assert status == 200
    assert length == EIGHT_MIB
    assert digest.hexdigest() == expected_sha256("8m")
    assert streams_open == 0


@pytest.mark.parametrize("body_kind", ["bytes", "async-iterable"])
async def test_8mib_upload_arrives_intact_at_hypercorn(
    body_kind: str, hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    data = expected_bytes("8m")
    content = data if body_kind == "bytes" else chunks_of(data)
    async with asyncio.timeout(30), Pool(client_ssl_context) as pool:
        response = await pool.request("POST", hypercorn_server.url("/sha256"), content=content)
    assert response.status == 200
    assert json.loads(response.content) == {"sha256": expected_sha256("8m"), "length": EIGHT_MIB}


@pytest.mark.parametrize("body_kind", ["bytes", "async-iterable"])
async def test_8mib_upload_is_read_whole_by_nginx(
    body_kind: str, nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    data = expected_bytes("8m")
    content = data if body_kind == "bytes" else chunks_of(data)
    async with asyncio.timeout(30), Pool(client_ssl_context) as pool:
        response = await pool.request("POST", nginx.url("/upload"), content=content)
    assert response.status == 200
    assert response.content == b"ok\n"


@pytest.mark.parametrize("kind", ["nghttpd", "hypercorn"])
async def test_8mib_echo_read_as_a_stream_matches_what_was_sent(
    kind: str, request: pytest.FixtureRequest, client_ssl_context: ssl.SSLContext
) -> None:
    server: ServerProcess = request.getfixturevalue("nghttpd" if kind == "nghttpd" else "hypercorn_server")
    data = expected_bytes("8m")
    digest = hashlib.sha256()
    length = 0
    async with (
        asyncio.timeout(30),
        Pool(client_ssl_context) as pool,
        pool.stream("POST", server.url("/echo"), content=chunks_of(data)) as response,
    ):
        status = response.status
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            length += len(chunk)
    assert status == 200
    assert length == EIGHT_MIB
    assert digest.hexdigest() == expected_sha256("8m")


# Flow control and cancellation.


async def test_slow_consumer_never_buffers_more_than_the_stream_window(
    h2_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    window = 65_535
    connector = RecordingConnector(client_ssl_context)
    digest = hashlib.sha256()
    length = 0
    peak = 0
    chunks = 0
    async with (
        asyncio.timeout(40),
        Pool(client_ssl_context, connector=connector, initial_stream_window=window, adaptive_window=False) as pool,
        pool.stream("GET", h2_server.url("/8m")) as response,
    ):
        (conn,) = connector.connections
        (stream,) = connector.streams
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            length += len(chunk)
            chunks += 1
            peak = max(peak, stream.buffered, conn.buffered)
            # Long pauses first: time for the server to send all it is allowed
            # to (over loopback, all 8 MiB if nothing held it back).
            await asyncio.sleep(0.1 if chunks <= 5 else 0.001)
            peak = max(peak, stream.buffered, conn.buffered)
            assert peak <= window, f"{peak} bytes buffered with a {window}-byte stream window"
    assert length == EIGHT_MIB
    assert digest.hexdigest() == expected_sha256("8m")
    # The samples are meaningful: the server ran ahead of the reader as far as the window let it.
    assert peak >= window // 2


async def test_cancelled_read_resets_the_stream_with_cancel_and_frees_its_slot(
    h2_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    connector = RecordingConnector(client_ssl_context)
    pool = Pool(client_ssl_context, connector=connector, initial_stream_window=65_535)
    reading = asyncio.Event()
    stream_ids: list[int] = []

    async def slow_download() -> None:
        async with pool.stream("GET", h2_server.url("/8m")) as response:
            stream_ids.append(response.stream_id)
            async for _ in response.aiter_bytes():
                reading.set()
                await asyncio.sleep(0.05)

    async with asyncio.timeout(20), pool:
        task = asyncio.create_task(slow_download())
        await reading.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (stream_id,) = stream_ids

        def reset_sent() -> bool:
            return any(
                isinstance(f, RstStreamFrame) and f.stream_id == stream_id and f.error_code == ErrorCodes.CANCEL
                for f in frames_written(bytes(connector.sent[0]))
            )

        assert await wait_until(reset_sent, 2.0), "no RST_STREAM(CANCEL) was written for the cancelled stream"
        assert pool.stats().streams_open == 0
        after = await pool.request("GET", h2_server.url("/small"))
        assert after.content == expected_bytes("small")
        assert len(connector.connections) == 1
        assert pool.stats().connections == 1


# Headers and trailers.


async def test_trailers_from_hypercorn_appear_on_the_response(
    hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with asyncio.timeout(10), Pool(client_ssl_context) as pool:
        response = await pool.request("GET", hypercorn_server.url("/trailers"), headers={"te": "trailers"})
    assert response.content == b"hello"
    assert response.trailers["x-checksum"] == "abc"
    assert response.trailers["X-Trailer-2"] == "two"


def _echoed_headers(content: bytes) -> list[tuple[str, str]]:
    return [(name, value) for name, value in json.loads(content)]


async def test_request_headers_reach_the_server(
    hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    sent = {"X-Custom": "value-1", "user-agent": "h2pool-tests", "accept": "application/json"}
    async with asyncio.timeout(10), Pool(client_ssl_context) as pool:
        response = await pool.request("GET", hypercorn_server.url("/headers"), headers=sent)
    received = _echoed_headers(response.content)
    assert ("x-custom", "value-1") in received
    assert ("user-agent", "h2pool-tests") in received
    assert ("accept", "application/json") in received
    # Without a host header, :authority is the origin's.
    assert [v for k, v in received if k == "host"] == [f"127.0.0.1:{hypercorn_server.port}"]


async def test_host_header_override_becomes_the_authority(
    hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with asyncio.timeout(10), Pool(client_ssl_context) as pool:
        response = await pool.request("GET", hypercorn_server.url("/headers"), headers={"Host": "alt.localhost:8443"})
    received = _echoed_headers(response.content)
    # Hypercorn presents :authority as the host header; a second host would show up here.
    assert [v for k, v in received if k == "host"] == ["alt.localhost:8443"]


# Pool life cycle.


async def test_idle_connection_is_closed_after_idle_timeout(
    nghttpd: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    idle_timeout = 0.3
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10), Pool(client_ssl_context, idle_timeout=idle_timeout) as pool:
        await pool.request("GET", nghttpd.url("/small"))
        idle_from = loop.time()
        assert pool.stats().connections == 1
        assert await wait_until(lambda: pool.stats().connections == 0, 5.0)
        closed_after = loop.time() - idle_from
        assert await wait_until(lambda: sockets_to(nghttpd.port) == 0, 2.0)
    assert closed_after >= idle_timeout * 0.9


async def test_aclose_fails_a_waiting_acquire_and_closes_sockets(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    # One slot in all: a second acquire has to wait.
    pool = Pool(client_ssl_context, max_connections_per_origin=1, max_concurrent_streams=1)
    async with asyncio.timeout(10):
        async with pool.acquire(nginx.origin):
            waiter = asyncio.create_task(pool.acquire(nginx.origin).__aenter__())
            assert await wait_until(lambda: pool.stats().waiting == 1, 2.0)
            assert sockets_to(nginx.port) == 1
            await pool.aclose()
            with pytest.raises(PoolClosed) as caught:
                await waiter
        assert caught.value.origin == nginx.origin
        assert await wait_until(lambda: sockets_to(nginx.port) == 0, 2.0)
        assert pool.stats().connections == 0
        with pytest.raises(PoolClosed):
            await pool.request("GET", nginx.url("/small"))


# Cleartext HTTP/2.


async def test_h2c_prior_knowledge_against_a_cleartext_server(server_factory: ServerFactory) -> None:
    server = server_factory("nghttpd", extra_args=["--no-tls"])
    origin = f"http://127.0.0.1:{server.port}"
    async with asyncio.timeout(10), Pool() as pool:
        response = await pool.request("GET", f"{origin}/small")
        stats = pool.stats()
    assert response.status == 200
    assert response.content == expected_bytes("small")
    assert stats.connections == 1
    assert list(stats.origins) == [origin]
