"""Origins and request targets.

The pool keys everything by origin, ``(scheme, host, port)``: two URLs share
connections exactly when their origins are equal. Parsing is cached because a
service tends to call the same few URLs many times over, and ``urlsplit`` is
one of the larger fixed costs of a small request.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

from .exceptions import InvalidRequest

DEFAULT_PORTS = {"https": 443, "http": 80}

_HOST_INVALID = re.compile(r"[\x00-\x20\x7f/?#@]")
_PATH_INVALID = re.compile(r"[\x00-\x20\x7f]|[^\x00-\xff]")


class Origin(NamedTuple):
    """Where a connection goes: ``https`` (TLS, ALPN h2) or ``http`` (h2c, prior knowledge)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"

    @property
    def authority(self) -> str:
        """The ``:authority`` pseudo-header: host, brackets for IPv6, port when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if DEFAULT_PORTS[self.scheme] == self.port:
            return host
        return f"{host}:{self.port}"


class Target(NamedTuple):
    """A parsed request URL: its origin and the ``:path`` to send."""

    origin: Origin
    path: str


@lru_cache(maxsize=4096)
def parse_url(url: str) -> Target:
    """Split ``url`` into origin and path, refusing what HTTP/2 cannot send."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidRequest(f"unsupported URL scheme in {url!r}: use https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"URL {url!r} carries credentials: send an authorization header")
    if port == 0:
        raise InvalidRequest(f"URL {url!r} has port 0")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    check_path(path)
    return Target(Origin(scheme, _ascii_host(parts.hostname, url), port or DEFAULT_PORTS[scheme]), path)


def _ascii_host(host: str | None, url: str) -> str:
    """The host as sent in ``:authority`` and SNI: ASCII, IDNA-encoded if need be."""
    if not host:
        raise InvalidRequest(f"URL {url!r} has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidRequest(f"URL {url!r} has a host that IDNA cannot encode: {exc}") from None
    if _HOST_INVALID.search(host):
        raise InvalidRequest(f"URL {url!r} has a space or control character in its host")
    return host


def check_path(path: str) -> None:
    """Refuse a ``:path`` that could not be sent as one request target (RFC 9113 §8.3.1)."""
    if path != "*" and not path.startswith("/"):
        raise InvalidRequest(f"request path {path!r} must start with '/' (or be '*')")
    if _PATH_INVALID.search(path):
        raise InvalidRequest(f"request path {path!r} has a space or control character, or one outside latin-1")


def parse_origin(origin: str | Origin) -> Origin:
    """Accept an :class:`Origin` or a URL whose path is ignored."""
    if isinstance(origin, Origin):
        return origin
    return parse_url(origin).origin
