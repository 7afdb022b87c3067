"""Header validation and the Headers view (h2pool.headers), without I/O."""

from __future__ import annotations

import pytest

from h2pool.exceptions import InvalidRequest, ProtocolError
from h2pool.headers import (
    Headers,
    ResponseHead,
    parse_response_head,
    parse_trailers,
    request_headers,
    trailer_headers,
)
from h2pool.origin import Origin

ORIGIN = Origin("https", "example.test", 8443)


# request_headers


def test_pseudo_headers_come_first_in_order() -> None:
    block = request_headers("GET", ORIGIN, "/a?b=1", [("accept", "*/*")])
    assert block == [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"example.test:8443"),
        (b":path", b"/a?b=1"),
        (b"accept", b"*/*"),
    ]


def test_authority_omits_the_default_port() -> None:
    block = request_headers("GET", Origin("https", "example.test", 443), "/", None)
    assert (b":authority", b"example.test") in block


def test_scheme_http_for_cleartext_origin() -> None:
    block = request_headers("GET", Origin("http", "127.0.0.1", 8080), "/", None)
    assert block[1] == (b":scheme", b"http")


def test_header_names_are_lowercased() -> None:
    block = request_headers("GET", ORIGIN, "/", [("X-Custom-Thing", "Value")])
    assert block[4:] == [(b"x-custom-thing", b"Value")]


def test_host_header_becomes_authority() -> None:
    block = request_headers("GET", ORIGIN, "/", [("Host", "other.test"), ("accept", "*/*")])
    assert block[2] == (b":authority", b"other.test")
    assert all(name != b"host" for name, _ in block)
    assert block[4:] == [(b"accept", b"*/*")]


def test_each_block_is_a_new_list_and_a_host_header_does_not_change_later_blocks() -> None:
    first = request_headers("GET", ORIGIN, "/", None)
    first.append((b"priority", b"u=1"))
    request_headers("GET", ORIGIN, "/", [("host", "other.test")])
    assert request_headers("GET", ORIGIN, "/", None) == first[:4]
    assert first[2] == (b":authority", b"example.test:8443")


def test_an_invalid_method_or_path_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="method"):
            request_headers("GE T", ORIGIN, "/", None)
        with pytest.raises(InvalidRequest, match="path"):
            request_headers("GET", ORIGIN, "/a b", None)


def test_accepts_a_list_of_pairs_keeping_order_and_repeats() -> None:
    block = request_headers("GET", ORIGIN, "/", [("a", "1"), ("b", "2"), ("a", "3")])
    assert block[4:] == [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]


def test_accepts_a_mapping() -> None:
    block = request_headers("POST", ORIGIN, "/", {"content-type": "text/plain", "x-n": "1"})
    assert block[4:] == [(b"content-type", b"text/plain"), (b"x-n", b"1")]


def test_accepts_bytes_names_and_values() -> None:
    block = request_headers("GET", ORIGIN, "/", [(b"X-Raw", b"\xe9t\xe9")])
    assert block[4:] == [(b"x-raw", b"\xe9t\xe9")]


def test_accepts_a_bytes_mapping() -> None:
    block = request_headers("GET", ORIGIN, "/", {b"x-a": b"1"})
    assert block[4:] == [(b"x-a", b"1")]


def test_latin1_str_value_is_encoded_as_latin1() -> None:
    block = request_headers("GET", ORIGIN, "/", [("x-name", "caf\u00e9")])
    assert block[4:] == [(b"x-name", b"caf\xe9")]


def test_surrounding_whitespace_is_stripped_from_values() -> None:
    block = request_headers("GET", ORIGIN, "/", [("x-a", " \tv \t")])
    assert block[4:] == [(b"x-a", b"v")]


def test_no_headers_gives_only_pseudo_headers() -> None:
    assert len(request_headers("GET", ORIGIN, "/", None)) == 4


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\0b", "a\r\nx-injected: 1", b"a\nb"])
def test_refuses_cr_lf_nul_in_values(value: str | bytes) -> None:
    with pytest.raises(InvalidRequest, match="CR, LF or NUL"):
        request_headers("GET", ORIGIN, "/", [("x-a", value)])


def test_refusal_names_the_origin() -> None:
    with pytest.raises(InvalidRequest) as info:
        request_headers("GET", ORIGIN, "/", [("x-a", "a\nb")])
    assert info.value.origin == "https://example.test:8443"
    assert "https://example.test:8443" in str(info.value)


@pytest.mark.parametrize("name", ["", "bad name", "x:y", ":path", "a\nb", "a\0", "caf\u00e9", "a(b)", b"a b"])
def test_refuses_invalid_names(name: str | bytes) -> None:
    with pytest.raises(InvalidRequest, match="invalid header name"):
        request_headers("GET", ORIGIN, "/", [(name, "v")])


@pytest.mark.parametrize("name", ["Connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"])
def test_refuses_connection_specific_headers(name: str) -> None:
    with pytest.raises(InvalidRequest, match="connection-specific"):
        request_headers("GET", ORIGIN, "/", [(name, "x")])


@pytest.mark.parametrize("value", ["trailers", "Trailers", " trailers "])
def test_te_trailers_is_allowed(value: str) -> None:
    block = request_headers("GET", ORIGIN, "/", [("te", value)])
    assert block[4][0] == b"te"


@pytest.mark.parametrize("value", ["gzip", "trailers, deflate", ""])
def test_refuses_te_other_than_trailers(value: str) -> None:
    with pytest.raises(InvalidRequest, match="te header"):
        request_headers("GET", ORIGIN, "/", [("te", value)])


def test_refuses_non_latin1_str_value() -> None:
    with pytest.raises(InvalidRequest, match="latin-1"):
        request_headers("GET", ORIGIN, "/", [("x-a", "\u20ac")])


def test_refuses_header_of_wrong_type() -> None:
    with pytest.raises(InvalidRequest, match="str or bytes"):
        request_headers("GET", ORIGIN, "/", [("x-a", 1)])  # type: ignore[list-item]


@pytest.mark.parametrize("method", ["", "GE T", "GET\r\n", "G\u00c9T", "\u20ac"])
def test_refuses_invalid_methods(method: str) -> None:
    with pytest.raises(InvalidRequest, match="method"):
        request_headers(method, ORIGIN, "/", None)


def test_method_case_is_kept() -> None:
    assert request_headers("PATCH", ORIGIN, "/", None)[0] == (b":method", b"PATCH")


def test_trailer_headers_follow_the_same_rules() -> None:
    assert trailer_headers([("X-Checksum", "abc")], ORIGIN) == [(b"x-checksum", b"abc")]
    with pytest.raises(InvalidRequest):
        trailer_headers([("x-a", "a\nb")], ORIGIN)


# Headers


def _headers() -> Headers:
    return Headers([("content-type", "text/plain"), ("set-cookie", "a=1"), ("x-b", "2"), ("set-cookie", "b=2")])


def test_lookup_is_case_insensitive() -> None:
    assert _headers()["Content-Type"] == "text/plain"


def test_repeated_names_are_joined_with_comma_space() -> None:
    assert _headers()["set-cookie"] == "a=1, b=2"


def test_missing_name_raises_key_error() -> None:
    with pytest.raises(KeyError):
        _headers()["missing"]


def test_get_returns_default_when_missing() -> None:
    headers = _headers()
    assert headers.get("missing") is None
    assert headers.get("missing", "d") == "d"
    assert headers.get("X-B") == "2"


def test_get_all_returns_each_value_in_order() -> None:
    assert _headers().get_all("SET-COOKIE") == ["a=1", "b=2"]
    assert _headers().get_all("missing") == []


def test_iteration_yields_pairs_in_received_order() -> None:
    assert list(_headers()) == [
        ("content-type", "text/plain"),
        ("set-cookie", "a=1"),
        ("x-b", "2"),
        ("set-cookie", "b=2"),
    ]


def test_integer_index_and_len() -> None:
    headers = _headers()
    assert len(headers) == 4
    assert headers[2] == ("x-b", "2")
    assert headers[-1] == ("set-cookie", "b=2")


def test_contains_by_name_is_case_insensitive() -> None:
    # Typed as a Sequence of pairs, so mypy's strict equality objects to a name here.
    headers = _headers()
    assert "X-B" in headers  # type: ignore[comparison-overlap]
    assert "missing" not in headers  # type: ignore[comparison-overlap]


def test_contains_a_pair() -> None:
    headers = _headers()
    assert ("x-b", "2") in headers
    assert ("x-b", "3") not in headers


def test_equals_a_list_of_pairs() -> None:
    assert Headers([("a", "1")]) == [("a", "1")]
    assert Headers([("a", "1")]) != [("a", "2")]


def test_equals_another_headers() -> None:
    assert Headers([("a", "1")]) == Headers([("a", "1")])
    assert Headers([("a", "1")]) != Headers([("a", "1"), ("b", "2")])


def test_headers_are_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(Headers())


def test_keys_and_items() -> None:
    headers = _headers()
    assert headers.keys() == ["content-type", "set-cookie", "x-b", "set-cookie"]
    assert headers.items() == list(headers)


# parse_response_head, parse_trailers


def test_response_head_parses_status_and_keeps_other_headers() -> None:
    head = parse_response_head(
        [(b":status", b"204"), (b"server", b"t"), (b"x-a", b"\xe9")], origin="https://o", stream_id=3
    )
    assert head == ResponseHead(204, Headers([("server", "t"), ("x-a", "\u00e9")]))
    assert head.status == 204
    assert head.headers["X-A"] == "\u00e9"


def _assert_names_origin_and_stream(error: ProtocolError, stream_id: int) -> None:
    assert (error.origin, error.stream_id) == ("https://o:1", stream_id)
    assert f"https://o:1 stream {stream_id}" in str(error)


@pytest.mark.parametrize("value", [b"abc", b"20", b"2000", b"", b"+20", b" 20"])
def test_malformed_status_is_a_protocol_error_naming_origin_and_stream(value: bytes) -> None:
    with pytest.raises(ProtocolError, match=":status") as info:
        parse_response_head([(b":status", value)], origin="https://o:1", stream_id=5)
    _assert_names_origin_and_stream(info.value, 5)


def test_missing_status_is_a_protocol_error_naming_origin_and_stream() -> None:
    with pytest.raises(ProtocolError, match="no :status") as info:
        parse_response_head([(b"server", b"t")], origin="https://o:1", stream_id=7)
    _assert_names_origin_and_stream(info.value, 7)


@pytest.mark.parametrize(
    "raw",
    [
        [(b"server", b"t"), (b":status", b"200")],
        [(b":status", b"200"), (b":status", b"200")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b":method", b"GET"), (b":status", b"200")],
    ],
    ids=["status-after-regular-field", "duplicate-status", "request-pseudo-header", "pseudo-header-first"],
)
def test_misplaced_or_unknown_pseudo_header_is_a_protocol_error(raw: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ProtocolError, match="pseudo-header") as info:
        parse_response_head(raw, origin="https://o:1", stream_id=9)
    _assert_names_origin_and_stream(info.value, 9)


@pytest.mark.parametrize(
    "field",
    [
        (b"X-Upper", b"v"),
        (b"bad name", b"v"),
        (b"", b"v"),
        (b"caf\xe9", b"v"),
        (b"x-a", b"a\nb"),
        (b"x-a", b"a\rb"),
        (b"x-a", b"a\0b"),
        (b"x-a", b" leading"),
        (b"x-a", b"trailing\t"),
        (b"connection", b"close"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"gzip"),
    ],
)
def test_malformed_response_field_is_a_protocol_error(field: tuple[bytes, bytes]) -> None:
    with pytest.raises(ProtocolError, match="malformed response") as info:
        parse_response_head([(b":status", b"200"), field], origin="https://o:1", stream_id=11)
    _assert_names_origin_and_stream(info.value, 11)


def test_response_field_with_inner_space_and_obs_text_is_accepted() -> None:
    head = parse_response_head(
        [(b":status", b"200"), (b"x-a", b"a b\tc"), (b"x-b", b"\xff"), (b"te", b"trailers")],
        origin="https://o",
        stream_id=1,
    )
    assert head.headers == [("x-a", "a b\tc"), ("x-b", "\u00ff"), ("te", "trailers")]


def test_trailers_decode_latin1() -> None:
    assert parse_trailers([(b"x-sum", b"\xff")], origin="https://o", stream_id=1) == [("x-sum", "\u00ff")]


def test_pseudo_header_in_trailers_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="pseudo-header") as info:
        parse_trailers([(b":status", b"200")], origin="https://o:1", stream_id=13)
    _assert_names_origin_and_stream(info.value, 13)


def test_malformed_trailer_field_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed response"):
        parse_trailers([(b"x-a", b"a\nb")], origin="https://o:1", stream_id=13)


@pytest.mark.parametrize("path", ["/a\r\nx-injected: 1", "/a\nb", "/a\0b", "/a b"])
def test_refuses_control_characters_and_spaces_in_path(path: str) -> None:
    with pytest.raises(InvalidRequest):
        request_headers("GET", ORIGIN, path, None)


def test_refuses_non_latin1_path() -> None:
    with pytest.raises(InvalidRequest):
        request_headers("GET", ORIGIN, "/\u20ac", None)


def test_credentials_and_short_cookies_are_never_indexed() -> None:
    from hpack import NeverIndexedHeaderTuple

    block = request_headers(
        "GET",
        ORIGIN,
        "/",
        [("Authorization", "Bearer x"), ("cookie", "a=1"), ("cookie", "session=" + "x" * 40), ("accept", "*/*")],
    )
    never = [field[0] for field in block[4:] if isinstance(field, NeverIndexedHeaderTuple)]
    assert never == [b"authorization", b"cookie"]
