"""Name resolution for connection set-up: pluggable resolvers and a shared cache.

A pool dials the same few hosts over and over, often many connections at
once (pre-warming, a burst of requests). Asking the system resolver each time
costs a thread-pool round trip per dial and, under a burst, one identical
look-up per connection. :class:`DNSCache` keeps each host's addresses for a
fixed time and lets every concurrent dial of one host wait on a single
look-up.

Resolvers return IP address strings (IPv6 without brackets, a link-local
scope kept as ``addr%scope``) in their preference order; the order is kept
because :func:`h2pool.happy_eyeballs.interleave` builds on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

#: Hosts a :class:`DNSCache` remembers by default; the oldest entry goes first.
DEFAULT_MAX_HOSTS = 1024


class Resolver(Protocol):
    """Turns a host name into the IP addresses to dial."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        """IP address strings in preference order; OSError (e.g. ``socket.gaierror``) if ``host`` does not resolve."""
        ...


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IP literal (IPv6 without brackets, a ``%scope`` allowed) rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _no_such_host(host: str, why: str) -> socket.gaierror:
    return socket.gaierror(socket.EAI_NONAME, f"cannot resolve {host!r}: {why}")


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), run in the loop's thread pool."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        # dict keeps the first occurrence's position: getaddrinfo's order is
        # the system's address preference (RFC 6724), which must survive.
        addresses: dict[str, None] = {}
        for family, _, _, _, sockaddr in infos:
            address = str(sockaddr[0])
            if family == socket.AF_INET6 and len(sockaddr) == 4 and sockaddr[3]:
                # A link-local address means nothing without its interface;
                # connect() turns the scope back into the sockaddr's scope id.
                address = f"{address}%{sockaddr[3]}"
            addresses[address] = None
        return tuple(addresses)


class StaticResolver:
    """A fixed table of host names to addresses, for tests and pinned deployments.

    It is what gives one loopback server two names, or makes a name resolve
    to ``::1`` and ``127.0.0.1`` together to exercise the family race. Names
    missing from the table go to ``fallback`` when one is given.
    """

    def __init__(self, mapping: Mapping[str, Sequence[str] | str], fallback: Resolver | None = None) -> None:
        table: dict[str, tuple[str, ...]] = {}
        for name, value in mapping.items():
            addresses = (value,) if isinstance(value, str) else tuple(value)
            if not addresses:
                raise ValueError(f"static resolver entry {name!r} has no addresses")
            for address in addresses:
                if not is_ip_address(address):
                    raise ValueError(
                        f"static resolver entry {name!r} maps to {address!r}, which is not an IP address "
                        "(IPv6 goes without brackets)"
                    )
            key = name.lower()
            if key in table:
                raise ValueError(f"static resolver entry {name!r} is given twice (names are case-insensitive)")
            table[key] = addresses
        self._table = table
        self._fallback = fallback

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        addresses = self._table.get(host.lower())
        if addresses is not None:
            return addresses
        if self._fallback is not None:
            return await self._fallback.resolve(host, port)
        raise _no_such_host(host, f"not in the static resolver's table ({', '.join(sorted(self._table)) or 'empty'})")


class CachedAddresses:
    """The bookkeeping of :class:`DNSCache`, without any I/O: hosts, their addresses, and when they expire.

    Entries are kept in insertion order so that, past ``max_hosts``, the
    oldest goes first; a refreshed entry counts as new.
    """

    def __init__(self, ttl: float, max_hosts: int = DEFAULT_MAX_HOSTS) -> None:
        if ttl < 0:
            raise ValueError(f"DNS cache ttl must be >= 0 seconds, not {ttl}")
        if max_hosts < 1:
            raise ValueError(f"DNS cache max_hosts must be >= 1, not {max_hosts}")
        self.ttl = ttl
        self.max_hosts = max_hosts
        self._entries: OrderedDict[str, tuple[tuple[str, ...], float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> tuple[str, ...] | None:
        """The addresses stored for ``key`` if still fresh at ``now``; an expired entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        addresses, expires_at = entry
        if now >= expires_at:
            del self._entries[key]
            return None
        return addresses

    def put(self, key: str, addresses: tuple[str, ...], now: float) -> None:
        """Remember ``addresses`` for ``ttl`` seconds from ``now`` (a ttl of 0 remembers nothing)."""
        if self.ttl == 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (addresses, now + self.ttl)
        while len(self._entries) > self.max_hosts:
            self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)


class DNSCache:
    """Addresses of each host kept for ``ttl`` seconds, with one look-up shared by concurrent callers.

    A failed or empty look-up is raised to every caller waiting on it and
    not remembered: the next call asks the resolver again. A caller that is
    cancelled leaves the look-up running for the others. The port is passed
    to the resolver but is not part of the key: a host's addresses do not
    depend on the port dialled.
    """

    def __init__(
        self,
        resolver: Resolver,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        max_hosts: int = DEFAULT_MAX_HOSTS,
    ) -> None:
        self.resolver = resolver
        self._clock = clock
        self._cached = CachedAddresses(ttl, max_hosts)
        self._lookups: dict[str, asyncio.Task[tuple[str, ...]]] = {}

    def __len__(self) -> int:
        """Hosts currently remembered (expired ones may still count until asked for)."""
        return len(self._cached)

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        if is_ip_address(host):
            return (host,)
        key = host.lower()
        addresses = self._cached.get(key, self._clock())
        if addresses is not None:
            return addresses
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.get_running_loop().create_task(self._look_up(host, port))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda task: self._finished(key, task))
        # The look-up is shared: cancelling this caller must not cancel it.
        return await asyncio.shield(lookup)

    def forget(self, host: str) -> None:
        """Drop ``host``'s addresses, e.g. after none of them accepted a connection."""
        self._cached.forget(host.lower())

    async def _look_up(self, host: str, port: int) -> tuple[str, ...]:
        addresses = tuple(await self.resolver.resolve(host, port))
        if not addresses:
            raise _no_such_host(host, "the resolver returned no addresses")
        return addresses

    def _finished(self, key: str, lookup: asyncio.Task[tuple[str, ...]]) -> None:
        if self._lookups.get(key) is lookup:
            del self._lookups[key]
        if lookup.cancelled():
            return
        # Reading the exception also keeps asyncio from logging it as never
        # retrieved when every caller had given up before it came.
        if lookup.exception() is None:
            self._cached.put(key, lookup.result(), self._clock())
