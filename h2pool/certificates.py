"""Which host names a verified server certificate covers, for connection coalescing.

RFC 9113 §9.1.1 lets a client send requests for host B over a connection made
for host A when the connection's certificate is valid for B. Only the
certificate's subjectAltName entries count (RFC 9525: the subject's common
name is never a host name), compared the way OpenSSL's hostname check
compares them when the connection is made:

* DNS names match case-insensitively, ignoring a trailing dot;
* a wildcard is allowed only as the whole left-most label, matches exactly
  one label, and never stands for a label of a public-suffix-like two-label
  name (``*.com`` covers nothing);
* IP addresses match IP-address entries only, never DNS names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.strip().split("%", 1)[0])
    except ValueError:
        return None


class CertificateNames:
    """The DNS names and IP addresses a certificate's subjectAltName lists."""

    __slots__ = ("dns_names", "ip_addresses")

    def __init__(self, dns_names: Iterable[str] = (), ip_addresses: Iterable[IPAddress] = ()) -> None:
        self.dns_names = frozenset(name.lower().rstrip(".") for name in dns_names if name)
        self.ip_addresses = frozenset(ip_addresses)

    def __repr__(self) -> str:
        names = sorted(self.dns_names) + sorted(str(ip) for ip in self.ip_addresses)
        return f"<CertificateNames {', '.join(names)}>"

    @classmethod
    def from_peercert(cls, cert: dict[str, Any] | None) -> CertificateNames | None:
        """From ``SSLObject.getpeercert()``: None when there is no verified certificate.

        ``getpeercert()`` returns an empty dict when the chain was not
        verified (``CERT_NONE``); such a connection must never be shared with
        another host.
        """
        if not cert:
            return None
        dns: list[str] = []
        ips: list[IPAddress] = []
        for kind, value in cert.get("subjectAltName", ()):
            if kind == "DNS":
                dns.append(value)
            elif kind == "IP Address":
                ip = _ip(value)
                if ip is not None:
                    ips.append(ip)
        return cls(dns, ips)

    def covers(self, host: str) -> bool:
        """Whether this certificate is valid for ``host`` (a DNS name in A-labels, or an IP address)."""
        ip = _ip(host)
        if ip is not None:
            return ip in self.ip_addresses
        name = host.lower().rstrip(".")
        if not name or name in self.dns_names:
            return bool(name)
        first, dot, rest = name.partition(".")
        # The wildcard stands for one whole label of a name with at least
        # two labels after it.
        return bool(first and dot and "." in rest) and f"*.{rest}" in self.dns_names
