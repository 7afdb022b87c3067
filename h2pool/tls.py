"""TLS set-up: one shared client context with ALPN ``h2``, and the session cache.

Loading the CA bundle costs about 15 ms under OpenSSL 3 (httpx#3627), so the
default context is built once per process and shared by every pool that does
not bring its own.

Sessions are offered by :mod:`h2pool.tls_transport`, which calls
``wrap_bio(..., session=...)`` itself (asyncio's ``create_connection`` takes
no session, cpython#79152). A session must come from the same context
(``ValueError`` otherwise) and, for safety, from a handshake with the same
verified hostname and port: a resumed handshake checks neither certificate
nor hostname.
"""

from __future__ import annotations

import ssl
from functools import lru_cache

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
