"""RFC 9218 priorities: the value type, the urgency queue, the header on the wire, local ordering.

A priority does two things in h2pool. On the wire it is only the
``priority`` header (and SETTINGS_NO_RFC7540_PRIORITIES, as we never send
PRIORITY frames). Locally it orders what the client rations itself: callers
queued for a stream slot, and request bodies waiting for connection send
window. The wire tests and the ordering tests play the server with
:mod:`h2pool.testing`, so each sees the exact frames; one ordering test runs
against real servers to show the order survives real sockets and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame

from h2pool import AcquireTimeout, ConnectionInfo, Pool, PoolHooks, Priority, Response
from h2pool.origin import parse_origin
from h2pool.priority import DEFAULT_PRIORITY, UrgencyQueue
from h2pool.testing import MockServer, PeerRequest, ScriptedPeer, idle
from tests.servers import ServerProcess
from tests.test_protocol import make_pool, settled_connection

ORIGIN = "https://example.test"
MCS = SettingCodes.MAX_CONCURRENT_STREAMS
IWS = SettingCodes.INITIAL_WINDOW_SIZE
#: RFC 9218 §2.1.
SETTINGS_NO_RFC7540_PRIORITIES = 0x9

URGENT = Priority(urgency=0)
BACKGROUND = Priority(urgency=7)

#: The peer's flow-control windows give the client this much before any WINDOW_UPDATE.
DEFAULT_CONNECTION_WINDOW = 65_535
#: The largest DATA payload the client may send before the peer raises MAX_FRAME_SIZE.
FRAME = 16_384


def spawn(pool: Pool, path: str, method: str = "GET", **kwargs: Any) -> asyncio.Task[Response]:
    return asyncio.get_running_loop().create_task(pool.request(method, f"{ORIGIN}{path}", **kwargs))


def priority_values(request: PeerRequest) -> list[bytes]:
    """Every ``priority`` field of the request, to catch duplicates as well as absence."""
    return [value for name, value in request.headers if name == b"priority"]


def data_sizes(peer: ScriptedPeer, stream_id: int) -> list[int]:
    """The payload size of each DATA frame the client sent on ``stream_id``, in order."""
    return [len(frame.data) for frame in peer.frames_of(DataFrame, stream_id)]


async def serve_in_order(peer: ScriptedPeer, count: int) -> list[str | None]:
    """Answer the next ``count`` requests one at a time; return their paths in the order they arrived."""
    paths = []
    for _ in range(count):
        request = await peer.next_request(complete=True)
        paths.append(request.path)
        request.respond()
    return paths


# Priority: the value type.


@pytest.mark.parametrize("urgency", [0, 3, 7])
def test_priority_accepts_urgencies_zero_to_seven(urgency: int) -> None:
    assert Priority(urgency=urgency).urgency == urgency


@pytest.mark.parametrize("urgency", [-1, 8, 100])
def test_priority_rejects_urgencies_outside_zero_to_seven(urgency: int) -> None:
    with pytest.raises(ValueError, match="urgency"):
        Priority(urgency=urgency)


@pytest.mark.parametrize("urgency", [True, False, 1.0, "1", None])
def test_priority_rejects_urgencies_that_are_not_plain_ints(urgency: Any) -> None:
    # bool is an int subclass: Priority(urgency=True) must not pass as urgency 1.
    with pytest.raises(ValueError, match="urgency"):
        Priority(urgency=urgency)


@pytest.mark.parametrize("incremental", [1, 0, "yes", None])
def test_priority_rejects_incremental_that_is_not_a_bool(incremental: Any) -> None:
    with pytest.raises(ValueError, match="incremental"):
        Priority(incremental=incremental)


def test_default_priority_is_urgency_three_not_incremental() -> None:
    assert Priority() == DEFAULT_PRIORITY == Priority(urgency=3, incremental=False)


@pytest.mark.parametrize(
    ("priority", "value"),
    [
        (Priority(), b""),
        (Priority(urgency=3, incremental=False), b""),
        (Priority(urgency=0), b"u=0"),
        (Priority(incremental=True), b"i"),
        (Priority(urgency=5, incremental=True), b"u=5, i"),
        (Priority(urgency=7), b"u=7"),
    ],
)
def test_header_value_leaves_out_default_members(priority: Priority, value: bytes) -> None:
    assert priority.header_value() == value


# UrgencyQueue.


def test_urgency_queue_serves_the_most_urgent_first() -> None:
    queue: UrgencyQueue[str] = UrgencyQueue()
    queue.append("background", 7)
    queue.append("urgent", 0)
    queue.append("normal", 3)
    assert [queue.popleft() for _ in range(3)] == ["urgent", "normal", "background"]


def test_urgency_queue_is_fifo_within_one_urgency() -> None:
    queue: UrgencyQueue[int] = UrgencyQueue()
    for item in range(5):
        queue.append(item, 2)
    assert [queue.popleft() for _ in range(5)] == [0, 1, 2, 3, 4]


def test_urgency_queue_appends_at_the_default_urgency_when_none_is_given() -> None:
    queue: UrgencyQueue[str] = UrgencyQueue()
    queue.append("default")
    queue.append("three", 3)
    queue.append("two", 2)
    queue.append("four", 4)
    assert list(queue) == ["two", "default", "three", "four"]


def test_urgency_queue_len_bool_and_iteration_follow_the_serving_order() -> None:
    queue: UrgencyQueue[str] = UrgencyQueue()
    assert (len(queue), bool(queue), list(queue)) == (0, False, [])
    queue.append("b7", 7)
    queue.append("a1", 1)
    queue.append("c1", 1)
    assert (len(queue), bool(queue), list(queue)) == (3, True, ["a1", "c1", "b7"])
    assert queue.popleft() == "a1"
    assert (len(queue), list(queue)) == (2, ["c1", "b7"])


def test_urgency_queue_first_peeks_without_removing() -> None:
    queue: UrgencyQueue[str] = UrgencyQueue()
    queue.append("later", 5)
    queue.append("next", 4)
    assert queue.first() == "next"
    assert len(queue) == 2
    assert queue.popleft() == "next"
    assert queue.first() == "later"


def test_urgency_queue_first_and_popleft_of_an_empty_queue_raise_index_error() -> None:
    queue: UrgencyQueue[str] = UrgencyQueue()
    with pytest.raises(IndexError):
        queue.first()
    with pytest.raises(IndexError):
        queue.popleft()
    queue.append("only", 6)
    queue.popleft()
    assert len(queue) == 0 and not queue
    with pytest.raises(IndexError):
        queue.first()
    with pytest.raises(IndexError):
        queue.popleft()


# The priority header on the wire, and our SETTINGS.


async def test_request_priority_is_sent_as_the_priority_header() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/", priority=Priority(urgency=1, incremental=True))
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        assert priority_values(request) == [b"u=1, i"]
        request.respond()
        assert (await task).status == 200


@pytest.mark.parametrize("priority", [None, DEFAULT_PRIORITY], ids=["none", "default"])
async def test_default_priority_sends_no_priority_header(priority: Priority | None) -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/", priority=priority)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        assert request.header("priority") is None
        request.respond()
        await task


@pytest.mark.parametrize("name", ["priority", "Priority"])
async def test_caller_priority_header_is_kept_and_not_duplicated(name: str) -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/", headers={name: "u=6"}, priority=Priority(urgency=0, incremental=True))
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        assert priority_values(request) == [b"u=6"]
        request.respond()
        await task


async def test_stream_priority_is_sent_as_the_priority_header() -> None:
    server = MockServer()
    async with make_pool(server) as pool:

        async def read_streamed() -> bytes:
            async with pool.stream("GET", f"{ORIGIN}/", priority=Priority(urgency=2)) as response:
                return await response.aread()

        task = asyncio.create_task(read_streamed())
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        assert priority_values(request) == [b"u=2"]
        request.respond(body=b"x")
        assert await task == b"x"


async def test_acquired_handle_sends_its_priority_with_send_headers() -> None:
    server = MockServer()
    async with make_pool(server) as pool, pool.acquire(ORIGIN, priority=Priority(urgency=6)) as handle:
        stream_id = await handle.send_headers("GET", "/", end_stream=True)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        assert request.stream_id == stream_id
        assert priority_values(request) == [b"u=6"]
        request.respond()
        assert (await handle.read_headers()).status == 200


async def test_replayed_request_carries_exactly_one_priority_header() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/", priority=Priority(urgency=4))
        peer = await server.next_peer()
        refused = await peer.next_request(complete=True)
        refused.reset(ErrorCodes.REFUSED_STREAM)
        replay = await peer.next_request(complete=True)
        assert replay.stream_id != refused.stream_id
        assert priority_values(refused) == priority_values(replay) == [b"u=4"]
        replay.respond()
        assert (await task).status == 200


async def test_client_settings_announce_no_rfc7540_priorities() -> None:
    server = MockServer()
    async with make_pool(server) as pool, pool.acquire(ORIGIN):
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        assert peer.client_settings[SETTINGS_NO_RFC7540_PRIORITIES] == 1


# Slot waiters by urgency.

#: Two ways to have one stream at a time: the server's limit, or the pool's own cap.
ONE_STREAM: dict[str, tuple[dict[int, int], dict[str, Any]]] = {
    "peer-limit": ({MCS: 1}, {}),
    "pool-limit": ({MCS: 100}, {"max_concurrent_streams": 1}),
}


@pytest.mark.parametrize("limit", list(ONE_STREAM))
async def test_urgent_request_overtakes_a_queue_of_background_ones(limit: str) -> None:
    settings, options = ONE_STREAM[limit]
    server = MockServer(settings=settings)
    async with make_pool(server, max_connections_per_origin=1, **options) as pool:
        peer = await settled_connection(server, pool)
        in_flight = spawn(pool, "/in-flight")
        first = await peer.next_request(complete=True)
        background = [spawn(pool, f"/bg{i}", priority=BACKGROUND) for i in range(3)]
        await idle()
        urgent = spawn(pool, "/urgent", priority=URGENT)
        await idle()
        assert pool.stats().waiting == 4
        assert len(peer.requests) == 1
        first.respond()
        assert await serve_in_order(peer, 4) == ["/urgent", "/bg0", "/bg1", "/bg2"]
        responses = await asyncio.gather(in_flight, urgent, *background)
        assert [response.status for response in responses] == [200] * 5
        assert pool.stats().waiting == 0


async def test_waiters_of_equal_urgency_are_served_in_arrival_order() -> None:
    server = MockServer(settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        peer = await settled_connection(server, pool)
        in_flight = spawn(pool, "/in-flight")
        first = await peer.next_request(complete=True)
        waiting = []
        # Interleaved arrivals: each urgency keeps its own arrival order.
        for path, priority in [("/low0", 5), ("/high0", 1), ("/low1", 5), ("/high1", 1), ("/low2", 5)]:
            waiting.append(spawn(pool, path, priority=Priority(urgency=priority)))
            await idle()
        assert pool.stats().waiting == 5
        first.respond()
        assert await serve_in_order(peer, 5) == ["/high0", "/high1", "/low0", "/low1", "/low2"]
        await asyncio.gather(in_flight, *waiting)


async def test_cancelled_urgent_waiter_does_not_hold_up_the_others() -> None:
    server = MockServer(settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        peer = await settled_connection(server, pool)
        in_flight = spawn(pool, "/in-flight")
        first = await peer.next_request(complete=True)
        background = [spawn(pool, f"/bg{i}", priority=BACKGROUND) for i in range(2)]
        await idle()
        urgent = spawn(pool, "/urgent", priority=URGENT)
        await idle()
        assert pool.stats().waiting == 3
        urgent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await urgent
        stats = pool.stats()
        assert stats.waiting == 2
        assert [origin.waiting for origin in stats.origins.values()] == [2]
        first.respond()
        assert await serve_in_order(peer, 2) == ["/bg0", "/bg1"]
        await asyncio.gather(in_flight, *background)
        assert "/urgent" not in [request.path for request in peer.requests.values()]
        stats = pool.stats()
        assert (stats.waiting, stats.streams_open, stats.slots_reserved) == (0, 0, 0)


async def test_urgent_waiter_cancelled_after_its_slot_was_granted_hands_the_slot_on() -> None:
    server = MockServer(settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1) as pool, contextlib.AsyncExitStack() as stack:
        peer = await settled_connection(server, pool)
        holder = await stack.enter_async_context(pool.acquire(ORIGIN))
        background = [spawn(pool, f"/bg{i}", priority=BACKGROUND) for i in range(2)]
        await idle()
        urgent = spawn(pool, "/urgent", priority=URGENT)
        await idle()
        assert pool.stats().waiting == 3
        # release() hands the slot to the urgent waiter at once; its task is
        # cancelled before it can run, so it must give the slot back.
        holder.release()
        assert pool.stats().waiting == 2
        urgent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await urgent
        assert await serve_in_order(peer, 2) == ["/bg0", "/bg1"]
        await asyncio.gather(*background)
        stats = pool.stats()
        assert (stats.waiting, stats.streams_open, stats.slots_reserved) == (0, 0, 0)


# Connection send window by urgency.


async def test_new_connection_window_goes_to_the_most_urgent_blocked_upload() -> None:
    # Large stream windows, the default connection window, and no window
    # handed back on its own: only the connection window limits the uploads.
    server = MockServer(settings={MCS: 100, IWS: 1 << 20}, ack_data=False)
    async with make_pool(server) as pool:
        peer = await settled_connection(server, pool)
        background = spawn(pool, "/bg", "POST", content=bytes(200 * 1024), priority=BACKGROUND)
        bg_request = await peer.next_request()
        await peer.wait_for(lambda: len(bg_request.body) == DEFAULT_CONNECTION_WINDOW)
        urgent = spawn(pool, "/urgent", "POST", content=bytes(20_000), priority=URGENT)
        urgent_request = await peer.next_request()
        await idle()
        assert not background.done() and not urgent.done()
        bg_id, urgent_id = bg_request.stream_id, urgent_request.stream_id
        assert data_sizes(peer, bg_id) == [FRAME, FRAME, FRAME, FRAME - 1]
        assert data_sizes(peer, urgent_id) == []

        peer.window_update(0, FRAME)
        await peer.wait_for(lambda: len(urgent_request.body) == FRAME)
        await idle()
        assert data_sizes(peer, urgent_id) == [FRAME]
        assert data_sizes(peer, bg_id) == [FRAME, FRAME, FRAME, FRAME - 1]

        # The urgent body needs 3,616 more bytes; the background one gets the rest.
        peer.window_update(0, FRAME)
        await urgent_request.wait_complete()
        await peer.wait_for(lambda: len(bg_request.body) == DEFAULT_CONNECTION_WINDOW + FRAME - (20_000 - FRAME))
        await idle()
        assert data_sizes(peer, urgent_id) == [FRAME, 20_000 - FRAME]
        assert data_sizes(peer, bg_id) == [FRAME, FRAME, FRAME, FRAME - 1, 2 * FRAME - 20_000]

        urgent_request.respond()
        assert (await urgent).status == 200
        peer.window_update(0, 1 << 20)
        await bg_request.wait_complete()
        assert len(bg_request.body) == 200 * 1024
        bg_request.respond()
        assert (await background).status == 200


async def test_new_connection_window_goes_to_blocked_uploads_of_equal_urgency_in_stream_order() -> None:
    server = MockServer(settings={MCS: 100, IWS: 1 << 20}, ack_data=False)
    async with make_pool(server) as pool:
        peer = await settled_connection(server, pool)
        earlier = spawn(pool, "/earlier", "POST", content=bytes(100_000), priority=Priority(urgency=5))
        earlier_request = await peer.next_request()
        await peer.wait_for(lambda: len(earlier_request.body) == DEFAULT_CONNECTION_WINDOW)
        later = spawn(pool, "/later", "POST", content=bytes(20_000), priority=Priority(urgency=5))
        later_request = await peer.next_request()
        await idle()
        assert earlier_request.stream_id < later_request.stream_id
        assert data_sizes(peer, later_request.stream_id) == []

        peer.window_update(0, FRAME)
        await peer.wait_for(lambda: len(earlier_request.body) == DEFAULT_CONNECTION_WINDOW + FRAME)
        await idle()
        assert data_sizes(peer, earlier_request.stream_id)[-1] == FRAME
        assert data_sizes(peer, later_request.stream_id) == []

        peer.window_update(0, 1 << 20)
        for request in (earlier_request, later_request):
            await request.wait_complete()
            request.respond()
        assert [response.status for response in await asyncio.gather(earlier, later)] == [200, 200]


# Against real servers.


class StreamOrder(PoolHooks):
    """Records each stream opened, in the order the pool sent its HEADERS."""

    def __init__(self) -> None:
        self.opened: list[tuple[int, int]] = []

    def stream_opened(self, conn: ConnectionInfo, stream_id: int) -> None:
        self.opened.append((conn.id, stream_id))


async def wait_until_waiting(pool: Pool, count: int) -> None:
    """Poll (bounded) until ``count`` callers wait for a slot."""
    for _ in range(500):
        if pool.stats().waiting == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} waiters, pool stats: {pool.stats()}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["nghttpd", "nginx"])
async def test_urgent_request_overtakes_background_ones_on_a_real_server(
    kind: str, request: pytest.FixtureRequest, client_ssl_context: ssl.SSLContext
) -> None:
    server: ServerProcess = request.getfixturevalue(kind)
    order = StreamOrder()
    pool = Pool(
        client_ssl_context, hooks=order, max_connections_per_origin=1, max_concurrent_streams=1, acquire_timeout=20
    )
    async with asyncio.timeout(30), pool:
        labels: dict[int, str] = {}
        # 8 MiB is far over the stream window: the stream stays open, holding
        # the only slot, until we read it.
        async with pool.stream("GET", server.url("/8m")) as held:
            labels[held.stream_id] = "held"
            background = [
                asyncio.create_task(pool.request("GET", server.url("/small"), priority=BACKGROUND)) for _ in range(3)
            ]
            await wait_until_waiting(pool, 3)
            urgent = asyncio.create_task(pool.request("GET", server.url("/small"), priority=URGENT))
            await wait_until_waiting(pool, 4)
            assert len(await held.aread()) == 8 * 1024 * 1024
        responses = await asyncio.gather(urgent, *background)
        assert [response.status for response in responses] == [200] * 4
        labels[responses[0].stream_id] = "urgent"
        for index, response in enumerate(responses[1:]):
            labels[response.stream_id] = f"bg{index}"
        assert len({conn_id for conn_id, _ in order.opened}) == 1
        assert [labels[stream_id] for _, stream_id in order.opened] == ["held", "urgent", "bg0", "bg1", "bg2"]


def test_discard_removes_a_queued_item_once_and_ignores_one_already_served() -> None:
    queue: UrgencyQueue[str] = UrgencyQueue()
    for item, urgency in (("a", 3), ("b", 3), ("c", 0)):
        queue.append(item, urgency)
    queue.discard("b", 3)
    assert list(queue) == ["c", "a"] and len(queue) == 2
    queue.discard("b", 3)
    queue.discard("c", 5)  # Not at that urgency: nothing happens.
    assert list(queue) == ["c", "a"] and len(queue) == 2


async def test_callers_that_give_up_leave_the_queue_instead_of_holding_their_place() -> None:
    server = MockServer()
    async with (
        make_pool(server, max_concurrent_streams=1, max_connections_per_origin=1, acquire_timeout=0.05) as pool,
        pool.acquire(ORIGIN),
    ):
        state = pool._origins[parse_origin(ORIGIN)]
        timed_out = [spawn(pool, f"/late{i}") for i in range(5)]
        cancelled = spawn(pool, "/cancelled", priority=URGENT)
        await idle()
        assert len(state.waiters) == 6
        cancelled.cancel()
        for task in timed_out:
            with pytest.raises(AcquireTimeout):
                await task
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert len(state.waiters) == 0
