"""Resolvers and the DNS cache (h2pool.resolver); the only real look-ups are of loopback names."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from h2pool.resolver import CachedAddresses, DNSCache, StaticResolver, SystemResolver


class CountingResolver:
    """Answers from a table, counting calls; ``gate`` (when given) holds every answer until set."""

    def __init__(self, table: dict[str, Sequence[str]], gate: asyncio.Event | None = None) -> None:
        self.table = table
        self.gate = gate
        self.calls: list[str] = []
        self.error: OSError | None = None

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.table[host.lower()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def let_waiters_block() -> None:
    """Run the loop until every task started so far is parked on its await (bounded)."""
    for _ in range(5):
        await asyncio.sleep(0)


# StaticResolver


async def test_static_resolver_answers_from_its_table_ignoring_case() -> None:
    resolver = StaticResolver({"Alias.Test": ["::1", "127.0.0.1"], "one.test": "127.0.0.1"})
    assert list(await resolver.resolve("alias.test", 443)) == ["::1", "127.0.0.1"]
    assert list(await resolver.resolve("ALIAS.TEST", 443)) == ["::1", "127.0.0.1"]
    assert list(await resolver.resolve("one.test", 80)) == ["127.0.0.1"]


async def test_static_resolver_refuses_an_unknown_name_naming_it() -> None:
    resolver = StaticResolver({"one.test": "127.0.0.1"})
    with pytest.raises(socket.gaierror, match=r"'other\.test'.*one\.test"):
        await resolver.resolve("other.test", 443)


async def test_static_resolver_passes_unknown_names_to_its_fallback() -> None:
    fallback = CountingResolver({"other.test": ["::1"]})
    resolver = StaticResolver({"one.test": "127.0.0.1"}, fallback=fallback)
    assert list(await resolver.resolve("other.test", 443)) == ["::1"]
    assert list(await resolver.resolve("one.test", 443)) == ["127.0.0.1"]
    assert fallback.calls == ["other.test"]


@pytest.mark.parametrize(
    "mapping",
    [
        {"a.test": "localhost"},
        {"a.test": ["127.0.0.1", "[::1]"]},
        {"a.test": []},
        {"a.test": "127.0.0.1", "A.TEST": "::1"},
    ],
    ids=["name", "bracketed-ipv6", "empty", "duplicate-name"],
)
def test_static_resolver_validates_its_table_at_construction(mapping: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"(?i)a\.test"):
        StaticResolver(mapping)


# SystemResolver (loopback names only)


async def test_system_resolver_resolves_localhost_to_loopback_addresses() -> None:
    addresses = await SystemResolver().resolve("localhost", 443)
    assert addresses
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)
    assert len(set(addresses)) == len(addresses)


@pytest.mark.parametrize("literal", ["127.0.0.1", "::1"])
async def test_system_resolver_returns_an_address_as_itself(literal: str) -> None:
    assert list(await SystemResolver().resolve(literal, 443)) == [literal]


async def test_system_resolver_deduplicates_in_order_and_keeps_link_local_scopes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only getaddrinfo's answer is faked here: nothing is dialled.
    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", port, 0, 1)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    assert list(await SystemResolver().resolve("dual.test", 443)) == ["::1", "127.0.0.1", "fe80::1%1"]


# CachedAddresses (no I/O)


def test_cached_addresses_expire_after_ttl() -> None:
    cached = CachedAddresses(ttl=10)
    cached.put("a.test", ("127.0.0.1",), now=0)
    assert cached.get("a.test", now=9.9) == ("127.0.0.1",)
    assert cached.get("a.test", now=10) is None
    assert len(cached) == 0


def test_cached_addresses_with_zero_ttl_remember_nothing() -> None:
    cached = CachedAddresses(ttl=0)
    cached.put("a.test", ("127.0.0.1",), now=0)
    assert cached.get("a.test", now=0) is None


def test_cached_addresses_drop_the_oldest_past_max_hosts() -> None:
    cached = CachedAddresses(ttl=60, max_hosts=3)
    for index, name in enumerate(["a", "b", "c"]):
        cached.put(name, ("127.0.0.1",), now=index)
    cached.put("a", ("::1",), now=3)  # refreshed: now the newest
    cached.put("d", ("127.0.0.1",), now=4)
    assert len(cached) == 3
    assert cached.get("b", now=5) is None
    assert cached.get("a", now=5) == ("::1",)
    assert cached.get("c", now=5) is not None
    assert cached.get("d", now=5) is not None


@pytest.mark.parametrize(("ttl", "max_hosts"), [(-1, 10), (10, 0)])
def test_cached_addresses_refuse_nonsense_limits(ttl: float, max_hosts: int) -> None:
    with pytest.raises(ValueError):
        CachedAddresses(ttl=ttl, max_hosts=max_hosts)


# DNSCache


async def test_dns_cache_keeps_answers_for_ttl_by_its_clock() -> None:
    resolver = CountingResolver({"a.test": ["127.0.0.1"]})
    clock = FakeClock()
    cache = DNSCache(resolver, ttl=30, clock=clock)
    assert list(await cache.resolve("a.test", 443)) == ["127.0.0.1"]
    clock.now += 29
    assert list(await cache.resolve("A.Test", 443)) == ["127.0.0.1"]
    assert resolver.calls == ["a.test"]
    clock.now += 1
    resolver.table["a.test"] = ["::1"]
    assert list(await cache.resolve("a.test", 443)) == ["::1"]
    assert len(resolver.calls) == 2


async def test_dns_cache_shares_one_look_up_among_concurrent_callers() -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({"a.test": ["::1", "127.0.0.1"]}, gate=gate)
    cache = DNSCache(resolver, ttl=30)
    callers = [asyncio.create_task(cache.resolve("a.test", 443)) for _ in range(50)]
    await let_waiters_block()
    gate.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*callers)
    assert resolver.calls == ["a.test"]
    assert all(list(r) == ["::1", "127.0.0.1"] for r in results)


async def test_dns_cache_with_zero_ttl_still_shares_concurrent_look_ups() -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({"a.test": ["127.0.0.1"]}, gate=gate)
    cache = DNSCache(resolver, ttl=0)
    callers = [asyncio.create_task(cache.resolve("a.test", 443)) for _ in range(5)]
    await let_waiters_block()
    gate.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*callers)
    assert len(resolver.calls) == 1
    await cache.resolve("a.test", 443)
    assert len(resolver.calls) == 2


async def test_dns_cache_raises_a_failure_to_every_sharer_and_does_not_keep_it() -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({"a.test": ["127.0.0.1"]}, gate=gate)
    resolver.error = socket.gaierror(socket.EAI_NONAME, "no such name")
    cache = DNSCache(resolver, ttl=30)
    callers = [asyncio.create_task(cache.resolve("a.test", 443)) for _ in range(3)]
    await let_waiters_block()
    gate.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, socket.gaierror) for r in results)
    assert len(resolver.calls) == 1
    resolver.error = None
    assert list(await cache.resolve("a.test", 443)) == ["127.0.0.1"]
    assert len(resolver.calls) == 2


async def test_dns_cache_refuses_an_empty_answer_and_does_not_keep_it() -> None:
    resolver = CountingResolver({"a.test": []})
    cache = DNSCache(resolver, ttl=30)
    with pytest.raises(OSError, match=r"'a\.test'.*no addresses"):
        await cache.resolve("a.test", 443)
    resolver.table["a.test"] = ["127.0.0.1"]
    assert list(await cache.resolve("a.test", 443)) == ["127.0.0.1"]


async def test_dns_cache_cancelled_first_caller_leaves_the_look_up_to_the_others() -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({"a.test": ["127.0.0.1"]}, gate=gate)
    cache = DNSCache(resolver, ttl=30)
    first = asyncio.create_task(cache.resolve("a.test", 443))
    await let_waiters_block()
    second = asyncio.create_task(cache.resolve("a.test", 443))
    await let_waiters_block()
    first.cancel()
    await let_waiters_block()
    assert first.cancelled()
    gate.set()
    async with asyncio.timeout(5):
        assert list(await second) == ["127.0.0.1"]
    assert resolver.calls == ["a.test"]
    # ...and the answer it got is kept for later callers.
    assert list(await cache.resolve("a.test", 443)) == ["127.0.0.1"]
    assert resolver.calls == ["a.test"]


async def test_dns_cache_look_up_abandoned_by_every_caller_is_still_kept() -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({"a.test": ["127.0.0.1"]}, gate=gate)
    cache = DNSCache(resolver, ttl=30)
    caller = asyncio.create_task(cache.resolve("a.test", 443))
    await let_waiters_block()
    caller.cancel()
    gate.set()
    await let_waiters_block()
    assert caller.cancelled()
    assert len(cache) == 1
    assert list(await cache.resolve("a.test", 443)) == ["127.0.0.1"]
    assert resolver.calls == ["a.test"]


@pytest.mark.parametrize("literal", ["127.0.0.1", "::1", "fe80::1%1"])
async def test_dns_cache_returns_addresses_without_asking_the_resolver(literal: str) -> None:
    resolver = CountingResolver({})
    cache = DNSCache(resolver, ttl=30)
    assert list(await cache.resolve(literal, 443)) == [literal]
    assert resolver.calls == []
    assert len(cache) == 0


async def test_dns_cache_forget_makes_the_next_call_ask_again() -> None:
    resolver = CountingResolver({"a.test": ["127.0.0.1"], "b.test": ["::1"]})
    cache = DNSCache(resolver, ttl=30)
    await cache.resolve("a.test", 443)
    await cache.resolve("b.test", 443)
    cache.forget("A.TEST")
    await cache.resolve("a.test", 443)
    await cache.resolve("b.test", 443)
    assert resolver.calls == ["a.test", "b.test", "a.test"]


async def test_dns_cache_holds_at_most_max_hosts() -> None:
    table: dict[str, Sequence[str]] = {f"h{i}.test": ["127.0.0.1"] for i in range(20)}
    resolver = CountingResolver(table)
    cache = DNSCache(resolver, ttl=30, max_hosts=8)
    for name in table:
        await cache.resolve(name, 443)
    assert len(cache) == 8
    await cache.resolve("h19.test", 443)  # among the newest: still kept
    await cache.resolve("h0.test", 443)  # the oldest: dropped, asked again
    assert resolver.calls.count("h19.test") == 1
    assert resolver.calls.count("h0.test") == 2


async def test_dns_cache_over_the_static_resolver_gives_two_names_one_address() -> None:
    cache = DNSCache(StaticResolver({"one.test": "127.0.0.1", "two.test": "127.0.0.1"}), ttl=30)
    assert list(await cache.resolve("one.test", 443)) == list(await cache.resolve("two.test", 443)) == ["127.0.0.1"]
    with pytest.raises(socket.gaierror):
        await cache.resolve("three.test", 443)
