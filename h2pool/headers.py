"""Header lists: validating what callers send, exposing what servers return.

Outbound headers are checked here, once, so that h2's own outbound
validation can stay off on the hot path: a CR, LF or NUL from a caller would
otherwise let one request smuggle another header, so it is refused with
:class:`InvalidRequest` and never reaches the encoder. Inbound header blocks
are validated by h2 (RFC 9113 §8.2); this module only turns them into
:class:`Headers`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import overload

from .exceptions import InvalidRequest, ProtocolError
from .origin import Origin

HeaderValue = str | bytes
HeaderInput = Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[HeaderValue, HeaderValue]] | None
RawHeaders = list[tuple[bytes, bytes]]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_VALUE_FORBIDDEN = re.compile(rb"[\r\n\0]")
#: RFC 9113 §8.2.2: these only mean something on a single HTTP/1.1 hop.
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


class Headers(Sequence[tuple[str, str]]):
    """An ordered list of ``(name, value)`` pairs with case-insensitive lookup.

    Iterating yields the pairs in the order received. ``headers["name"]``
    returns the value, or the values joined by ``", "`` when the name repeats
    (RFC 9110 §5.3); :meth:`get_all` returns them separately.
    """

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._pairs = list(pairs)

    @overload
    def __getitem__(self, key: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, key: slice) -> Sequence[tuple[str, str]]: ...
    @overload
    def __getitem__(self, key: str) -> str: ...
    def __getitem__(self, key: int | slice | str) -> tuple[str, str] | Sequence[tuple[str, str]] | str:
        if isinstance(key, str):
            values = self.get_all(key)
            if not values:
                raise KeyError(key)
            return ", ".join(values)
        return self._pairs[key]

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            wanted = key.lower()
            return any(name == wanted for name, _ in self._pairs)
        return key in self._pairs

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._pairs == other._pairs
        if isinstance(other, list):
            return self._pairs == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._pairs!r})"

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value for ``key`` (joined if repeated), or ``default``."""
        values = self.get_all(key)
        return ", ".join(values) if values else default

    def get_all(self, key: str) -> list[str]:
        """Every value for ``key``, in order."""
        wanted = key.lower()
        return [value for name, value in self._pairs if name == wanted]

    def keys(self) -> list[str]:
        return [name for name, _ in self._pairs]

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)


def _as_bytes(value: HeaderValue, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidRequest(f"header {what} {value!r} is not latin-1: encode it yourself") from None
    raise InvalidRequest(f"header {what} must be str or bytes, not {type(value).__name__}")


def _pairs_of(headers: HeaderInput) -> Iterable[tuple[HeaderValue, HeaderValue]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


def _validated_fields(headers: HeaderInput, origin: Origin) -> RawHeaders:
    """Lower-case, check and encode caller-supplied fields (no pseudo-headers)."""
    fields: RawHeaders = []
    for raw_name, raw_value in _pairs_of(headers):
        name = _as_bytes(raw_name, "name").lower()
        value = _as_bytes(raw_value, "value")
        if not _TOKEN.match(name):
            raise InvalidRequest(f"invalid header name {raw_name!r}", origin=str(origin))
        if _VALUE_FORBIDDEN.search(value):
            raise InvalidRequest(f"header {raw_name!r} has CR, LF or NUL in its value", origin=str(origin))
        if name in _CONNECTION_SPECIFIC:
            raise InvalidRequest(
                f"header {raw_name!r} is connection-specific and not allowed in HTTP/2", origin=str(origin)
            )
        value = value.strip(b" \t")
        if name == b"te" and value.lower() != b"trailers":
            raise InvalidRequest("the te header may only be 'trailers' in HTTP/2", origin=str(origin))
        fields.append((name, value))
    return fields


def request_headers(method: str, origin: Origin, path: str, headers: HeaderInput) -> RawHeaders:
    """Build the header block for a request, refusing anything unsafe to send.

    A caller's ``host`` header becomes ``:authority`` (RFC 9113 §8.3.1).
    """
    if not _TOKEN.match(method.lower().encode("latin-1", "replace")):
        raise InvalidRequest(f"invalid HTTP method {method!r}", origin=str(origin))
    authority = origin.authority.encode("ascii")
    fields = _validated_fields(headers, origin)
    for index, (name, value) in enumerate(fields):
        if name == b"host":
            authority = value
            del fields[index]
            break
    return [
        (b":method", method.encode("latin-1")),
        (b":scheme", origin.scheme.encode("ascii")),
        (b":authority", authority),
        (b":path", path.encode("latin-1")),
        *fields,
    ]


def trailer_headers(headers: HeaderInput, origin: Origin) -> RawHeaders:
    """Validate trailers a caller sends: the same rules as for headers."""
    return _validated_fields(headers, origin)


def response_head(raw: Iterable[tuple[bytes, bytes]], *, origin: str, stream_id: int) -> tuple[int, Headers]:
    """Split a validated response header block into status and headers."""
    status: int | None = None
    pairs: list[tuple[str, str]] = []
    for name, value in raw:
        if name == b":status":
            if len(value) != 3 or not value.isdigit():
                raise ProtocolError(f"malformed :status {value!r}", origin=origin, stream_id=stream_id)
            status = int(value)
        else:
            pairs.append((name.decode("latin-1"), value.decode("latin-1")))
    if status is None:
        raise ProtocolError("response has no :status", origin=origin, stream_id=stream_id)
    return status, Headers(pairs)


def plain_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Trailers as :class:`Headers`."""
    return Headers((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)
