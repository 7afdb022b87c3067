"""TLS set-up: one shared client context, ALPN ``h2``, and a way to offer a session.

Loading the CA bundle costs about 15 ms under OpenSSL 3 (httpx#3627), so the
default context is built once per process and shared by every pool that does
not bring its own.

asyncio's ``create_connection`` takes no TLS session (cpython#79152): its
SSL protocol calls ``sslcontext.wrap_bio(...)`` without ``session=``.
:class:`SessionOffer` stands in for the context on one connect and adds the
session, which works for any ``SSLContext``, including a caller's own. The
session must come from the same context (``ValueError`` otherwise) and, for
safety, from a handshake with the same verified hostname and port: a resumed
handshake checks neither certificate nor hostname.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any, cast

import certifi

ALPN_H2 = "h2"


@lru_cache(maxsize=1)
def default_ssl_context() -> ssl.SSLContext:
    """Verification and hostname checks on, certifi's CAs, TLS 1.2 or newer, ALPN h2."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_H2])
    return context


def prepare_context(context: ssl.SSLContext | None) -> ssl.SSLContext:
    """The context a pool uses: the default, or the caller's with ALPN set to h2.

    A caller's context is used as it is for verification; only its ALPN list
    is set, because without ``h2`` in it no server would speak HTTP/2.
    """
    if context is None:
        return default_ssl_context()
    context.set_alpn_protocols([ALPN_H2])
    return context


class SessionOffer:
    """A stand-in for an ``SSLContext`` that offers ``session`` on ``wrap_bio``.

    Duck-typed rather than a subclass so it works with a caller's own
    context; asyncio's SSL protocol only calls ``wrap_bio`` on it.
    """

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession) -> None:
        self._context = context
        self._session = session

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, **kwargs: Any) -> ssl.SSLObject:
        kwargs["session"] = self._session
        return self._context.wrap_bio(incoming, outgoing, **kwargs)

    def as_context(self) -> ssl.SSLContext:
        """Typed as what ``create_connection`` accepts; asyncio only calls ``wrap_bio``."""
        return cast(ssl.SSLContext, self)


class SessionCache:
    """TLS sessions for resumption, keyed by the verified hostname and port.

    A resumed handshake skips certificate and hostname verification, so a
    session is only ever offered to the exact ``(server_hostname, port)`` whose
    full handshake produced it, and only with the context that made it (a
    cache belongs to one pool, which has one context). An entry expires when
    the server said its ticket would (``ticket_lifetime_hint``, else the
    session's own timeout); a server that declines an offered session has the
    origin's entry dropped, and the next handshake is a full, verified one.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[ssl.SSLSession, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, host: str, port: int, now: float) -> ssl.SSLSession | None:
        entry = self._entries.get((host, port))
        if entry is None:
            return None
        session, expires_at = entry
        if now >= expires_at:
            del self._entries[(host, port)]
            return None
        return session

    def put(self, host: str, port: int, session: ssl.SSLSession, now: float) -> None:
        lifetime = session.ticket_lifetime_hint or session.timeout
        if lifetime > 0:
            self._entries[(host, port)] = (session, now + min(lifetime, session.timeout))

    def drop(self, host: str, port: int) -> None:
        self._entries.pop((host, port), None)
