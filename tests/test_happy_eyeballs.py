"""Happy Eyeballs (h2pool.happy_eyeballs): ordering and scheduling without I/O, then races on loopback.

The races use one port on both ``::1`` and ``127.0.0.1``, each side either
live (listening), refusing (bound, not listening: the kernel answers RST) or
black-holed: listening with ``listen(0)``, never accepting, its one-entry
accept queue already full, so Linux drops further SYNs and connect() hangs,
as it does towards a host whose IPv6 route silently loses packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from h2pool.happy_eyeballs import AllAttemptsFailed, AttemptSchedule, connect, interleave, sockaddr

V6 = "::1"
V4 = "127.0.0.1"
#: Upper bound for "it did not hang": far above any delay used here.
NO_HANG = 2.0

# interleave (no I/O; the strings are ordered, never dialled)


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        ([], []),
        (["::1"], ["::1"]),
        (["::1", "::2", "::3", "127.0.0.1", "127.0.0.2"], ["::1", "127.0.0.1", "::2", "127.0.0.2", "::3"]),
        (["127.0.0.1", "127.0.0.2", "::1", "::2"], ["127.0.0.1", "::1", "127.0.0.2", "::2"]),
        (["::1", "127.0.0.1", "127.0.0.2", "127.0.0.3"], ["::1", "127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        (["127.0.0.2", "::2", "::1", "127.0.0.1"], ["127.0.0.2", "::2", "127.0.0.1", "::1"]),
        (["127.0.0.3", "127.0.0.1"], ["127.0.0.3", "127.0.0.1"]),
        (["fe80::1%1", "127.0.0.1", "::1"], ["fe80::1%1", "127.0.0.1", "::1"]),
    ],
    ids=["empty", "one", "v6-first", "v4-first", "v6-runs-out", "mixed-keeps-family-order", "v4-only", "scoped"],
)
def test_interleave_alternates_families_from_the_first(addresses: list[str], expected: list[str]) -> None:
    assert interleave(addresses) == expected


# AttemptSchedule (no I/O, times given by hand)


def test_schedule_starts_the_next_address_only_after_the_delay() -> None:
    schedule = AttemptSchedule(["::1", "::2", "127.0.0.1"], delay=0.25)
    assert schedule.start(10.0) == "::1"
    assert schedule.start(10.0) is None
    assert schedule.wait(10.1) == pytest.approx(0.15)
    assert schedule.start(10.2) is None
    assert schedule.start(10.25) == "127.0.0.1"
    assert schedule.start(10.6) == "::2"
    assert schedule.wait(10.6) is None
    assert schedule.start(100.0) is None
    assert schedule.running == 3
    assert not schedule.exhausted


def test_schedule_starts_the_next_address_at_once_when_an_attempt_fails() -> None:
    schedule = AttemptSchedule(["::1", "127.0.0.1"], delay=0.25)
    assert schedule.start(0.0) == "::1"
    schedule.failed("::1", ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert schedule.wait(0.01) == 0
    assert schedule.start(0.01) == "127.0.0.1"


def test_schedule_failure_of_an_older_attempt_also_starts_the_next_at_once() -> None:
    schedule = AttemptSchedule(["::1", "127.0.0.1", "::2"], delay=0.25)
    assert schedule.start(0.0) == "::1"
    assert schedule.start(0.25) == "127.0.0.1"
    schedule.failed("::1", TimeoutError("timed out"))
    assert schedule.start(0.3) == "::2"


def test_schedule_is_exhausted_when_every_attempt_failed_and_keeps_their_order() -> None:
    schedule = AttemptSchedule(["::1", "127.0.0.1"], delay=0.25)
    first = schedule.start(0.0)
    second = schedule.start(0.25)
    assert (first, second) == ("::1", "127.0.0.1")
    schedule.failed("127.0.0.1", ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert not schedule.exhausted
    schedule.failed("::1", TimeoutError("timed out"))
    assert schedule.exhausted
    assert [address for address, _ in schedule.failures] == ["127.0.0.1", "::1"]


def test_schedule_with_zero_delay_starts_everything_at_once() -> None:
    schedule = AttemptSchedule(["::1", "127.0.0.1", "::2"], delay=0)
    started = [schedule.start(5.0) for _ in range(4)]
    assert started == ["::1", "127.0.0.1", "::2", None]


@pytest.mark.parametrize(("addresses", "delay"), [([], 0.25), (["::1"], -0.1)])
def test_schedule_refuses_no_addresses_or_a_negative_delay(addresses: list[str], delay: float) -> None:
    with pytest.raises(ValueError):
        AttemptSchedule(addresses, delay)


# sockaddr


def test_sockaddr_carries_an_ipv6_scope_as_the_scope_id() -> None:
    assert sockaddr("127.0.0.1", 443) == ("127.0.0.1", 443)
    assert sockaddr("::1", 443) == ("::1", 443, 0, 0)
    assert sockaddr("fe80::1%3", 443) == ("fe80::1", 443, 0, 3)
    assert sockaddr("fe80::1%lo", 443) == ("fe80::1", 443, 0, socket.if_nametoindex("lo"))


# Races on loopback


@dataclass
class Endpoints:
    """One port on ::1 and 127.0.0.1; ``live`` holds the listening sockets by address."""

    port: int
    live: dict[str, socket.socket] = field(default_factory=dict)

    def accept(self, address: str) -> socket.socket:
        listener = self.live[address]
        listener.settimeout(NO_HANG)
        conn, _ = listener.accept()
        return conn


def _bind(address: str, port: int, stack: contextlib.ExitStack) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    return sock


def _black_hole(listener: socket.socket, address: str, stack: contextlib.ExitStack) -> None:
    """Fill ``listener``'s accept queue until a connect times out: from then on its SYNs are dropped."""
    listener.listen(0)
    port = listener.getsockname()[1]
    for _ in range(8):
        client = stack.enter_context(socket.socket(listener.family, socket.SOCK_STREAM))
        client.settimeout(0.2)
        try:
            client.connect((address, port))
        except TimeoutError:
            client.close()
            return
    pytest.fail(f"could not make a black hole on {address}: connects kept succeeding")


@contextlib.contextmanager
def loopback(**behaviour: str) -> Iterator[Endpoints]:
    """Sockets for ``v6=`` and ``v4=`` each ``"live"``, ``"refused"`` or ``"black_hole"``, on one port."""
    addresses = {"v6": V6, "v4": V4}
    with contextlib.ExitStack() as stack:
        for _ in range(20):
            attempt = stack.enter_context(contextlib.ExitStack())
            try:
                first = _bind(V6, 0, attempt)
                port = first.getsockname()[1]
                bound = {V6: first, V4: _bind(V4, port, attempt)}
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                attempt.close()
                continue
            break
        else:
            pytest.fail("no port free on both ::1 and 127.0.0.1 in 20 tries")
        endpoints = Endpoints(port)
        for key, kind in behaviour.items():
            address = addresses[key]
            if kind == "live":
                bound[address].listen(16)
                endpoints.live[address] = bound[address]
            elif kind == "black_hole":
                _black_hole(bound[address], address, attempt)
            else:
                assert kind == "refused"
        yield endpoints


def _half_open_connects() -> list[object]:
    return [c for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_SYN_SENT]


@contextlib.contextmanager
def no_leaks() -> Iterator[None]:
    """No socket left open, no connect still pending and no ResourceWarning once the block is done."""
    process = psutil.Process()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        fds = process.num_fds()
        yield
        gc.collect()
    assert process.num_fds() == fds
    assert _half_open_connects() == []
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def _no_other_tasks() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


async def _timed_connect(addresses: list[str], port: int, delay: float) -> tuple[socket.socket, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(delay + NO_HANG):
        sock = await connect(addresses, port, delay)
    return sock, loop.time() - started


async def _assert_talks_to(sock: socket.socket, endpoints: Endpoints, address: str) -> None:
    """``sock`` is connected, non-blocking, and its bytes reach the listener on ``address``."""
    assert not sock.getblocking()
    assert sock.getpeername()[:2] == (address, endpoints.port)
    with endpoints.accept(address) as server_side:
        async with asyncio.timeout(NO_HANG):
            await asyncio.get_running_loop().sock_sendall(sock, b"ping")
        server_side.settimeout(NO_HANG)
        assert server_side.recv(4) == b"ping"


@pytest.mark.parametrize(
    ("addresses", "dead", "live"),
    [([V6, V4], "v6", V4), ([V4, V6], "v4", V6)],
    ids=["ipv6-refused", "ipv4-refused"],
)
async def test_connect_moves_on_at_once_when_the_first_family_refuses(
    addresses: list[str], dead: str, live: str
) -> None:
    delay = 2.0
    with loopback(**{dead: "refused", "v6" if dead == "v4" else "v4": "live"}) as endpoints, no_leaks():
        sock, elapsed = await _timed_connect(addresses, endpoints.port, delay)
        with sock:
            await _assert_talks_to(sock, endpoints, live)
        # A refusal starts the next attempt without waiting out the delay.
        assert elapsed < delay / 2
        assert _no_other_tasks()


@pytest.mark.parametrize(
    ("addresses", "dead", "live"),
    [([V6, V4], "v6", V4), ([V4, V6], "v4", V6)],
    ids=["ipv6-black-holed", "ipv4-black-holed"],
)
async def test_connect_moves_on_after_the_delay_when_the_first_family_hangs(
    addresses: list[str], dead: str, live: str
) -> None:
    delay = 0.25
    with loopback(**{dead: "black_hole", "v6" if dead == "v4" else "v4": "live"}) as endpoints, no_leaks():
        sock, elapsed = await _timed_connect(addresses, endpoints.port, delay)
        with sock:
            await _assert_talks_to(sock, endpoints, live)
        assert delay - 0.01 <= elapsed < delay + NO_HANG
        assert _no_other_tasks()


async def test_connect_takes_the_first_address_when_it_answers() -> None:
    with loopback(v6="live", v4="live") as endpoints, no_leaks():
        sock, elapsed = await _timed_connect([V4, V6], endpoints.port, delay=NO_HANG)
        with sock:
            await _assert_talks_to(sock, endpoints, V4)
        assert elapsed < NO_HANG
        assert _no_other_tasks()


@pytest.mark.parametrize("address", [V4, V6])
async def test_connected_sockets_have_nagles_algorithm_off(address: str) -> None:
    # Without TCP_NODELAY a small write waits for the ACK of the last one,
    # which a quiet server delays by 40 ms: every 1 MiB download stalled so.
    with loopback(v6="live", v4="live") as endpoints, no_leaks():
        sock, _ = await _timed_connect([address], endpoints.port, delay=NO_HANG)
        with sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_connect_with_zero_delay_races_everything_and_closes_the_losers() -> None:
    with loopback(v6="live", v4="live") as endpoints, no_leaks():
        sock, _ = await _timed_connect([V6, V4], endpoints.port, delay=0)
        with sock:
            assert sock.getpeername()[0] in (V6, V4)
        # no_leaks: the loser's socket, connected or not, was closed.
        assert _no_other_tasks()


async def test_connect_raises_naming_every_address_when_all_refuse() -> None:
    with loopback(v6="refused", v4="refused") as endpoints, no_leaks():
        with pytest.raises(AllAttemptsFailed) as failed:
            await _timed_connect([V6, V4], endpoints.port, delay=NO_HANG)
        assert isinstance(failed.value, OSError)
        message = str(failed.value)
        assert f"[::1]:{endpoints.port}" in message
        assert f"127.0.0.1:{endpoints.port}" in message
        assert [address for address, _ in failed.value.failures] == [V6, V4]
        assert all(isinstance(error, ConnectionRefusedError) for _, error in failed.value.failures)
        assert _no_other_tasks()


@pytest.mark.parametrize("delay", [0.05, 10.0], ids=["both-started", "second-not-started"])
async def test_cancelling_connect_closes_every_attempt(delay: float) -> None:
    with loopback(v6="black_hole", v4="black_hole") as endpoints, no_leaks():
        task = asyncio.create_task(connect([V6, V4], endpoints.port, delay))
        await asyncio.sleep(0.3)
        assert len(_half_open_connects()) == (2 if delay < 0.3 else 1)
        task.cancel()
        async with asyncio.timeout(NO_HANG):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert _no_other_tasks()


async def test_connect_timeout_from_the_caller_closes_every_attempt() -> None:
    with loopback(v6="black_hole", v4="black_hole") as endpoints, no_leaks():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.4):
                await connect([V6, V4], endpoints.port, delay=0.1)
        assert _no_other_tasks()


async def test_connect_refuses_an_empty_address_list() -> None:
    with pytest.raises(ValueError):
        await connect([], 443, delay=0.25)
