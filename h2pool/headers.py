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
from functools import lru_cache
from typing import NamedTuple, overload

from hpack import NeverIndexedHeaderTuple

from .exceptions import InvalidRequest, ProtocolError
from .origin import Origin, check_path
from .priority import Priority

HeaderValue = str | bytes
HeaderInput = Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[HeaderValue, HeaderValue]] | None
RawHeaders = list[tuple[bytes, bytes]]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})
#: Short cookies are guessable, as h2's own default treats them.
_SHORT_COOKIE = 20
_VALUE_FORBIDDEN = re.compile(rb"[\r\n\0]")
#: RFC 9113 §8.2.1: no controls, space, upper case or non-ASCII in a name;
#: no CR, LF or NUL in a value, nor white space at either end of it.
_FIELD_NAME = re.compile(rb"[^\x00-\x20A-Z\x7f-\xff]+\Z")
_FIELD_VALUE_INVALID = re.compile(rb"[\r\n\0]|\A[ \t]|[ \t]\Z")
#: RFC 9113 §8.2.2: these only mean something on a single HTTP/1.1 hop.
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


class Headers:
    """An ordered list of ``(name, value)`` pairs with case-insensitive lookup.

    Not a ``Sequence`` subclass on purpose: ``"name" in headers`` must type-check.

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
        if name in _SENSITIVE or (name == b"cookie" and len(value) < _SHORT_COOKIE):
            # Never indexed (RFC 7541 §7.1.3): a shared compression context
            # must not let other requests probe secrets by their size.
            fields.append(NeverIndexedHeaderTuple(name, value))
        else:
            fields.append((name, value))
    return fields


def request_headers(method: str, origin: Origin, path: str, headers: HeaderInput) -> RawHeaders:
    """Build the header block for a request, refusing anything unsafe to send.

    A caller's ``host`` header becomes ``:authority`` (RFC 9113 §8.3.1).
    """
    pseudo = _pseudo_fields(method, origin, path)
    if not headers:
        return list(pseudo)
    fields = _validated_fields(headers, origin)
    for index, (name, value) in enumerate(fields):
        if name == b"host":
            del fields[index]
            return [pseudo[0], pseudo[1], (b":authority", value), pseudo[3], *fields]
    return [*pseudo, *fields]


@lru_cache(maxsize=4096)
def _pseudo_fields(method: str, origin: Origin, path: str) -> tuple[tuple[bytes, bytes], ...]:
    """``:method``, ``:scheme``, ``:authority`` and ``:path``, checked and encoded once per distinct request line.

    A service sends the same few requests over and over; building and
    checking these four fields was about 5% of a small request.
    """
    if not _TOKEN.match(method.lower().encode("latin-1", "replace")):
        raise InvalidRequest(f"invalid HTTP method {method!r}", origin=str(origin))
    check_path(path)
    return (
        (b":method", method.encode("latin-1")),
        (b":scheme", origin.scheme.encode("ascii")),
        (b":authority", origin.authority.encode("ascii")),
        (b":path", path.encode("latin-1")),
    )


def add_priority_header(block: RawHeaders, priority: Priority) -> None:
    """Append RFC 9218's ``priority`` field unless it is all defaults or the caller set one."""
    value = priority.header_value()
    if value and not any(name == b"priority" for name, _ in block):
        block.append((b"priority", value))


def trailer_headers(headers: HeaderInput, origin: Origin) -> RawHeaders:
    """Validate trailers a caller sends: the same rules as for headers."""
    return _validated_fields(headers, origin)


class ResponseHead(NamedTuple):
    """The final response's status and headers (1xx responses are skipped)."""

    status: int
    headers: Headers


def parse_response_head(raw: Iterable[tuple[bytes, bytes]], *, origin: str, stream_id: int) -> ResponseHead:
    """Validate a response header block (RFC 9113 §8.2, §8.3.2) into status and headers."""
    status, headers = _parse_fields(raw, origin, stream_id, response=True)
    if status is None:
        raise ProtocolError("malformed response: no :status", origin=origin, stream_id=stream_id)
    return ResponseHead(status, headers)


def parse_trailers(raw: Iterable[tuple[bytes, bytes]], *, origin: str, stream_id: int) -> Headers:
    """Validate a trailer block: regular fields only."""
    return _parse_fields(raw, origin, stream_id, response=False)[1]


def _parse_fields(
    raw: Iterable[tuple[bytes, bytes]], origin: str, stream_id: int, *, response: bool
) -> tuple[int | None, Headers]:
    status: int | None = None
    pairs: list[tuple[str, str]] = []
    for name, value in raw:
        if name[:1] == b":":
            if not response or name != b":status" or status is not None or pairs:
                raise ProtocolError(
                    f"malformed response: pseudo-header {name!r} not allowed here", origin=origin, stream_id=stream_id
                )
            if len(value) != 3 or not value.isdigit():
                raise ProtocolError(f"malformed response: :status {value!r}", origin=origin, stream_id=stream_id)
            status = int(value)
            continue
        if not _FIELD_NAME.match(name):
            raise ProtocolError(f"malformed response: field name {name!r}", origin=origin, stream_id=stream_id)
        if _FIELD_VALUE_INVALID.search(value):
            raise ProtocolError(f"malformed response: value of {name!r}", origin=origin, stream_id=stream_id)
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise ProtocolError(
                f"malformed response: connection-specific field {name!r}", origin=origin, stream_id=stream_id
            )
        pairs.append((name.decode("latin-1"), value.decode("latin-1")))
    return status, Headers(pairs)
